"""Method registry. Built-ins are listed lazily; third-party methods arrive through the ``unlearnbench.methods``
entry-point group or ``@METHODS.register("name")``."""
from unlearnbench.methods.base import Method, MethodConfig
from unlearnbench.registry import Registry

# scan_package: a new file in methods/ registers itself with @METHODS.register("name"), no list to edit
METHODS: Registry[type[Method]] = Registry("method", Method, "unlearnbench.methods",
                                           scan_package="unlearnbench.methods")
METHODS.register_lazy("rkl", "unlearnbench.methods.rkl:ReverseKL", "reverse-kl")
METHODS.register_lazy("fkl", "unlearnbench.methods.fkl:ForwardKL", "forward-kl")
METHODS.register_lazy("lik", "unlearnbench.methods.lik:Likelihood", "likelihood")
METHODS.register_lazy("rkl-is", "unlearnbench.methods.rkl_is:ReverseKLIS")
METHODS.register_lazy("lik-is", "unlearnbench.methods.lik_is:LikelihoodIS")
METHODS.register_lazy("rkl-fixed", "unlearnbench.methods.rkl_fixed:RKLFixed")
METHODS.register_lazy("esd", "unlearnbench.methods.esd:ESD")
METHODS.register_lazy("salun", "unlearnbench.methods.salun:SalUn")
METHODS.register_lazy("siss", "unlearnbench.methods.siss:SISS")
METHODS.register_lazy("neggrad", "unlearnbench.methods.neggrad:NegGrad")
METHODS.register_lazy("naive", "unlearnbench.methods.neggrad:NaiveDeletion")
METHODS.register_lazy("erasediff", "unlearnbench.methods.erasediff:EraseDiff")

__all__ = ["METHODS", "Method", "MethodConfig"]
