"""Many samples: a process pool or a Dask cluster, a result cache, failure isolation, progress and the outputs.

:func:`run` is what ``cytopipe run`` calls. It reads the sample sheet and the gate file, fits the data-driven
gates whose scope spans several samples (``subject``, ``baseline``) on this machine, sends one
:class:`cytopipe.pipeline.SampleTask` per sample to the workers, caches every finished sample under
``OUT/.cache/``, and writes the result tables, ``manifest.json`` and ``report.html``.

Determinism: rows are sorted by subject, day, sample and population order, and floats are written with a fixed
format, so ``--workers 1``, ``--workers N`` and a Dask cluster give byte-identical CSV files.

Modules: ``runner`` (:func:`run`, :class:`RunResult`: plan, fit shared gates, execute, write), ``cache``
(:class:`ResultCache`, :func:`task_key`), ``executors`` (in process, process pool, Dask; :func:`process_one`),
``progress`` (:class:`Progress`: bar, plain lines or JSON log) and ``tables`` (result tables, drift QC,
``manifest.json``, ``gates_fitted.wsp``). Everything public is re-exported here.
"""

from .cache import CACHE_DIR as CACHE_DIR
from .cache import CACHE_FORMAT as CACHE_FORMAT
from .cache import ResultCache as ResultCache
from .cache import task_key as task_key
from .executors import process_one as process_one
from .progress import Progress as Progress
from .runner import CLINICAL_NAME as CLINICAL_NAME
from .runner import DEFAULT_SCHEDULER_TIMEOUT as DEFAULT_SCHEDULER_TIMEOUT
from .runner import RunResult as RunResult
from .runner import run as run
