"""Lets PyPI's torchvision import on CPU-only torch (installed by `make setup` on CPU machines only).

PyPI ships torchvision as a CUDA build. On CPU torch its C++ ops library cannot load (it links
libtorch_cuda), and `import torchvision` then fails in `_meta_registrations`, which registers fake
kernels for `torchvision::nms` and `::qnms` without checking that the ops exist. Everything else in
torchvision is Python on torch, and that is all the Qwen2-VL processors use (image and video
resizing), so this hook, run from a .pth file at interpreter start, waits for the first `import
torchvision` and, only when the ops library fails to load, defines the two schemas those
registrations need. The ops themselves stay unavailable (calling nms raises). Nothing is imported
until something looks torchvision up (an import, or a `find_spec` probe such as transformers'); with
a working torchvision (a GPU install) the hook defines nothing.
"""

import glob
import importlib.abc
import importlib.util
import os
import sys


class _Guard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)  # once: the real finders load torchvision after this
        spec = importlib.util.find_spec("torchvision")
        if spec is None or spec.origin is None:
            return None
        import torch

        # as torchvision finds its ops library; none, or one that cannot load, is what it catches too
        libs = glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so"))
        try:
            torch.ops.load_library(libs[0])
        except (IndexError, ImportError, OSError):
            for op in ("nms", "qnms"):
                torch.library.define(
                    f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
                )
        return spec


sys.meta_path.insert(0, _Guard())
