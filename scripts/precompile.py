"""Import every kdistill module and the libraries its runs load (``--tests``: also those only the tests load), so
that Python writes their bytecode once: scripts/setup.sh runs this after ``pip install --no-compile``. Optional
libraries that are missing are skipped: this only warms a cache."""

import importlib
import pkgutil
import sys

import kdistill

# kdistill.__main__ would run the CLI; matplotlib's pyplot is imported lazily by the report layer.
RUN = [m.name for m in pkgutil.walk_packages(kdistill.__path__, "kdistill.") if m.name != "kdistill.__main__"]
RUN += ["matplotlib.pyplot"]
TESTS = [
    "sklearn.linear_model",
    "sklearn.ensemble",
    "onnx",
    "onnxruntime",
    "transformers",
    "transformers.models.bert.modeling_bert",
    "transformers.models.gpt2.modeling_gpt2",
    "pytest",
    "hypothesis",
]

for name in RUN + (TESTS if "--tests" in sys.argv[1:] else []):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
