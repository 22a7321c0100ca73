"""Document collections: extraction, structured chunks, a SQLite index per collection, retrieval.

Qt-free and torch-free (the worker, the CLI and the tests import it alike):

* `extract` -- text out of PDF (pypdf), DOCX (python-docx), Markdown, plain text, HTML (the
  standard library's html.parser) and source code, as blocks that know their page and lines;
  a file that cannot be read raises `Unreadable` with a reason a person can act on;
* `chunk` -- blocks into chunks that follow the document's structure (headings, paragraphs,
  pages) and remember file, page and line range;
* `index` -- one SQLite file per collection: FTS5 BM25 always, vectors and hybrid ranking only
  when an embedding function is given;
* `store` -- named collections in the user data folder;
* `indexer` -- `index_collection(...)`: the indexing job (incremental, cancellable, pausable);
* `retrieve` -- what goes into the model's context for a question, within a token budget.
"""
