"""polo_lib: the library under the notebooks. Flat for notebooks (`from polo_lib import data,
model, params, runs, train`), layered inside; imports only point down (tests/test_layers.py):

  core           paths, atomic, errors, prompts, params, notebook, device, progress
  models         model, local_models, inference
  stages         data, train, evaluate, metrics, plots
  records        runs, reports
  orchestration  pipeline (the recipe, once), preflight, queues, compare, sweeps/
  edges          deploy/ (export, serve, chat_app), cli, colab (the notebooks' Colab install)

Nothing is imported here: `import polo_lib` stays cheap, and Unsloth is imported first by
whoever loads a model (model.import_unsloth).
"""
