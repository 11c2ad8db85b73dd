// Makes the kernel library importable as the Python module `cora._C`; importing it runs the
// TORCH_LIBRARY registrations. Built by setup.py only: the CMake library has no Python dependency.
#include <Python.h>

static struct PyModuleDef cora_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  return PyModule_Create(&cora_module);
}
