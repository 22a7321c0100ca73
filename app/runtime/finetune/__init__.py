"""Fine-tuning: LoRA / QLoRA with peft and TRL in a child process, checkpoints, resume, export.

``data`` reads and validates the person's file, ``collate`` turns examples into ids and labels with
the loss on the assistant's words only, ``train`` runs TRL's SFTTrainer (inside ``child``, started
by ``runner``), ``export`` writes the adapter, the merged model and a GGUF for the library.
"""
