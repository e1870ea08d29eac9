"""The one trainer of the library: optimisers and schedules (``optim``), checkpoints (``checkpoint``), run
files (``run_files``), host memory (``host_memory``) and the training loop (``trainer``). Methods plug in
through ``longtail.methods.base.Method``; a run is evaluated by ``longtail.evaluation.evaluator``, across
processes through ``longtail.distributed``."""
