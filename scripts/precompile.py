"""Import every kdistill module and the libraries its runs load (``--tests``: also those only the tests load), so
that Python writes their bytecode once: scripts/setup.sh runs this after ``pip install --no-compile``. Optional
libraries that are missing are skipped: this only warms a cache. ``--torch``: PyTorch's part alone (what a training
step loads), which needs nothing but torch: set-up runs it while pip installs the other dependencies."""

import importlib
import pkgutil
import sys

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


def warm_torch() -> None:
    """What a run imports only when it trains and measures: PyTorch's first optimizer pulls in torch._dynamo and
    sympy (~800 modules, ~7 s to compile in every process otherwise), autocast, backward, the FLOP counter."""
    import torch
    import torch.utils.flop_counter  # noqa: F401 - the deployment figures count FLOPs

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, fused=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(torch.randn(2, 1, 8, 8)).float().sum()
    loss.backward()
    opt.step()


def warm_run() -> None:
    """What kdistill adds to :func:`warm_torch`'s path: its models and config, the FLOP counter run, the image
    plugins."""
    from kdistill.deploy import flops_per_sample
    from kdistill.models import build_model

    flops_per_sample(build_model("cnn", (1, 8, 8), 2, {"channels": [4, 8]}), (1, 8, 8))
    from PIL import Image

    Image.init()  # the image plugins that saving a figure loads


def main(argv: list[str]) -> None:
    warm_torch()
    if "--torch" in argv:
        return
    import kdistill

    # kdistill.__main__ would run the CLI; matplotlib's pyplot is imported lazily by the report layer.
    run = [m.name for m in pkgutil.walk_packages(kdistill.__path__, "kdistill.") if m.name != "kdistill.__main__"]
    run += ["matplotlib.pyplot", "matplotlib.backends.backend_agg", "torch.utils.serialization.config"]
    for name in run + (TESTS if "--tests" in argv else []):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    warm_run()


if __name__ == "__main__":
    main(sys.argv[1:])
