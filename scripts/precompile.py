"""Import every kdistill module and the libraries its runs load (``--tests``: also those only the tests load), so
that Python writes their bytecode once: scripts/setup.sh runs this after ``pip install --no-compile``. Optional
libraries that are missing are skipped: this only warms a cache."""

import importlib
import pkgutil
import sys

import kdistill

# kdistill.__main__ would run the CLI; matplotlib's pyplot is imported lazily by the report layer.
RUN = [m.name for m in pkgutil.walk_packages(kdistill.__path__, "kdistill.") if m.name != "kdistill.__main__"]
RUN += ["matplotlib.pyplot", "matplotlib.backends.backend_agg", "torch.utils.serialization.config"]
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


def warm_run() -> None:
    """What a run imports only when it trains and measures: PyTorch's first optimizer pulls in torch._dynamo and
    sympy (~800 modules, ~7 s to compile in every process otherwise), autocast, backward, the FLOP counter."""
    import torch

    from kdistill.config import TrainConfig
    from kdistill.deploy import flops_per_sample
    from kdistill.models import build_model
    from kdistill.trainer import make_optimizer

    model = build_model("cnn", (1, 8, 8), 2, {"channels": [4, 8]})
    opt = make_optimizer(list(model.parameters()), TrainConfig())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(torch.randn(2, 1, 8, 8)).float().sum()
    loss.backward()
    opt.step()
    flops_per_sample(model, (1, 8, 8))
    from PIL import Image

    Image.init()  # the image plugins that saving a figure loads


for name in RUN + (TESTS if "--tests" in sys.argv[1:] else []):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
warm_run()
