# Builds lowpeft's compiled extension lowpeft._C from csrc/ (package metadata lives in pyproject.toml).
#
# CPU sources always (when a C++ compiler is present); the CUDA sources are added when the installed
# torch has CUDA and nvcc is found. TORCH_CUDA_ARCH_LIST (default "9.0") and MAX_JOBS are honoured by
# torch.utils.cpp_extension; LOWPEFT_SKIP_EXT=1 builds the pure-Python package only. Trade-off: few,
# large translation units (one per op and device, plus the registration), because every file that
# includes torch's headers costs 30-60 s of compile time on a 2-core CI machine.
import glob
import os

from setuptools import setup


def _extensions():
    if os.environ.get("LOWPEFT_SKIP_EXT") == "1":
        return [], {}
    import torch
    from torch.utils import cpp_extension

    root = os.path.dirname(os.path.abspath(__file__))
    sources = ["csrc/registration.cpp"] + sorted(
        os.path.relpath(path, root)
        for folder in ("autograd", "cpu")
        for path in glob.glob(os.path.join(root, "csrc", folder, "*.cpp"))
    )
    cxx_flags = ["-O3", "-fopenmp"]
    with_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        sources += sorted(
            os.path.relpath(path, root) for path in glob.glob(os.path.join(root, "csrc", "cuda", "*.cu"))
        )
        extension = cpp_extension.CUDAExtension(
            "lowpeft._C",
            sources,
            define_macros=[("LOWPEFT_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        extension = cpp_extension.CppExtension(
            "lowpeft._C",
            sources,
            define_macros=[("LOWPEFT_WITH_CUDA", "0")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    return [extension], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
