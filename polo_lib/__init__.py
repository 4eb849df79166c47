"""polo_lib: the library under the notebooks. Flat for notebooks (`from polo_lib import data,
model, params, runs, train`), layered inside; imports only point down (tests/test_layers.py):

  core           paths, atomic, errors, prompts, registry, params/, notebook, device, progress, unsloth_first
  models         model, local_models, inference/
  stages         data/, train/, align/, task_eval, trackers, stats, evaluate, metrics/, plots
  records        runs/, ratings, reports
  orchestration  pipeline, preflight, queues, compare, replicates, judge/, sweeps/
  edges          deploy/, cli/, colab

Nothing is imported here: `import polo_lib` stays cheap, and Unsloth is imported first by
whoever loads a model (model.import_unsloth).
"""
