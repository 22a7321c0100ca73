"""Tool calling for every model: the template's own syntax where it has one, Hearth's otherwise,
and arguments generated under a grammar from each tool's JSON schema so that they always parse.

- `formats`: the closed list of call syntaxes (hermes, llama3, mistral, hearth), detected from the
  chat template, with their grammars and parsers;
- `schema`: the supported JSON-schema subset and the bounds added for small models;
- `render`: conversations with tools through a chat template, as transformers renders them;
- `grammar`: llguidance compiles the calls' grammar into the token loop's logits mask (both backends);
- `calls`: `ToolRun`, one request with tools from prompt to ``tool_calls``.
"""
