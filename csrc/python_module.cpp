// The Python module sencache_kernels._C. It has no Python-level functions: importing it loads this shared object,
// whose static initialisers (TORCH_LIBRARY in csrc/sencache/ops.cpp, TORCH_LIBRARY_IMPL in each op's files) register
// the ops as torch.ops.sencache.* (the list: sencache_kernels/ops.def).
// Plain CPython API (no pybind11) keeps the build small and fast.
#include <Python.h>

static struct PyModuleDef sencache_c_module = {
    PyModuleDef_HEAD_INIT,
    "sencache_kernels._C",
    "Compiled sencache ops; importing this module registers torch.ops.sencache.{delta_norm, decide, commit, "
    "set_conditional, capture_if}.",
    -1,
    nullptr,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&sencache_c_module); }
