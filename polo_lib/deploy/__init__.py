"""Where a trained run leaves the workspace: the edges of polo_lib.

  export      a run as its LoRA adapter, a merged 16-bit model or GGUF files, each checked by reloading
  gguf        llama.cpp's converter (installed from PyPI), GGUF conversion and metadata, the Ollama Modelfile
  parity      the prompts every export answers, token agreement with its source, the template/EOS check
  serve       `polo serve RUN`: an OpenAI-compatible HTTP server (FastAPI + uvicorn): the app, its routes, checks
  openai_api  OpenAI's request and response shapes, the fields the server refuses, its errors (ApiError)
  backend     the server's batching backend: one model, one generation thread, requests sharing batches
  chat_app    `polo chat RUN`: a Gradio app, tuned vs base side by side
  rate_app    `polo rate RUN`: a Gradio page for blind human ratings of two answers (ratings.py computes)
  explain     `polo explain RUN PAPER`: a whole paper explained paragraph by paragraph, as an HTML page
  papers      a paper (.txt, .md, .pdf) read and split into blocks, paragraphs fitted to max_seq_length
  draft       `polo draft PAPER`: its paragraphs drafted into easy Korean by a teacher endpoint, to review
  page        the explained paper as Markdown and HTML, side by side, glossary terms marked
  limits      the serving limits' defaults, shared by `polo serve`'s flags and the server

Edges: nothing below imports them. Within polo_lib only cli.py imports polo_lib.deploy; these
modules build on inference (loading, generation), runs (lookup), ratings and prompts. Importing the
package imports none of its modules, so FastAPI and Gradio load only with serve, chat_app and rate_app.
"""
