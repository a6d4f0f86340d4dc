"""Task registry: built-ins listed lazily, plugins through the ``unlearnbench.tasks`` entry-point group, and any other
module of this package found by a scan (a new file registers itself with ``@TASKS.register("name")``, no list to
edit; ``_private`` modules hold what several tasks share)."""
from unlearnbench.registry import Registry
from unlearnbench.tasks.base import MetricValue, ModelBundle, Task

TASKS: Registry[type[Task]] = Registry("task", Task, "unlearnbench.tasks", scan_package="unlearnbench.tasks")
TASKS.register_lazy("gmm-concept", "unlearnbench.tasks.gmm_concept:GMMConceptTask")
TASKS.register_lazy("gmm-data", "unlearnbench.tasks.gmm_data:GMMDataTask")
TASKS.register_lazy("digits-concept", "unlearnbench.tasks.digits_concept:DigitsConceptTask")
TASKS.register_lazy("digits-data", "unlearnbench.tasks.digits_data:DigitsDataTask")
TASKS.register_lazy("sd-concept", "unlearnbench.tasks.stable_diffusion:SDConceptTask")
TASKS.register_lazy("ddpm-data", "unlearnbench.tasks.ddpm:DDPMDataTask")

__all__ = ["TASKS", "Task", "ModelBundle", "MetricValue"]
