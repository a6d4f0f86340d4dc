"""Task registry: built-ins listed lazily, plugins through the ``unlearnbench.tasks`` entry-point group."""
from unlearnbench.registry import Registry
from unlearnbench.tasks.base import MetricValue, ModelBundle, Task

TASKS: Registry[type[Task]] = Registry("task", Task, "unlearnbench.tasks")
TASKS.register_lazy("gmm-concept", "unlearnbench.tasks.gmm:GMMConceptTask")
TASKS.register_lazy("gmm-data", "unlearnbench.tasks.gmm:GMMDataTask")
TASKS.register_lazy("digits-concept", "unlearnbench.tasks.digits:DigitsConceptTask")
TASKS.register_lazy("digits-data", "unlearnbench.tasks.digits:DigitsDataTask")
TASKS.register_lazy("sd-concept", "unlearnbench.tasks.stable_diffusion:SDConceptTask")
TASKS.register_lazy("ddpm-data", "unlearnbench.tasks.ddpm:DDPMDataTask")

__all__ = ["TASKS", "Task", "ModelBundle", "MetricValue"]
