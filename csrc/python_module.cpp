// Makes the kernel library importable as the Python module `cora._C`; importing it runs the
// TORCH_LIBRARY registrations. Built by setup.py only: the CMake library has no Python dependency.
//
// It also holds the one Python binding that torch.ops cannot serve well: the list face of
// linear_sum_assignment (cora/ops/linear_assignment.py). Called through torch.ops, a list of P
// matrices is boxed into IValues and back on the way in, the 2P results likewise on the way out, and
// each input tensor's last C++ reference is dropped without the GIL (which it then takes, once per
// tensor). This binding calls the same op unboxed through the dispatcher (so every kernel, mode and
// fake tensor still applies), keeps the GIL for the per-matrix steps and builds the list of
// (row_ind, col_ind) pairs itself: 1057 small problems went from 1.07 to 0.90 ms (benchmarks/README.md).
// The face passes a non-empty list (the dispatcher needs a tensor to dispatch on).
#include <Python.h>

#include "cora_ops.h"

#include <ATen/PythonTorchFunctionTLS.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <tuple>
#include <vector>

namespace {

// _linear_sum_assignment(costs: list, maximize: bool) -> list[tuple[Tensor, Tensor]], or NotImplemented
// when a matrix is a Tensor subclass or a TorchFunctionMode is on: __torch_function__ is handled by
// torch.ops' own binding, which the caller then uses.
PyObject* linear_sum_assignment_list(PyObject* /*module*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* list = nullptr;
  int maximize = 0;
  if (!PyArg_ParseTuple(args, "O!p", &PyList_Type, &list, &maximize)) return nullptr;
  const Py_ssize_t num = PyList_GET_SIZE(list);
  bool plain = !at::impl::torch_function_mode_enabled();
  std::vector<at::Tensor> costs;
  costs.reserve(num);
  for (Py_ssize_t p = 0; p < num; ++p) {
    PyObject* item = PyList_GET_ITEM(list, p);
    if (!THPVariable_Check(item)) {
      PyErr_Format(PyExc_TypeError, "linear_sum_assignment: costs[%zd] must be a Tensor, got %s", p,
                   Py_TYPE(item)->tp_name);
      return nullptr;
    }
    plain = plain && THPVariable_CheckExact(item);
    costs.push_back(THPVariable_Unpack(item));
  }
  if (!plain) Py_RETURN_NOTIMPLEMENTED;
  std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> result;
  {
    pybind11::gil_scoped_release no_gil;
    result = cora::linear_sum_assignment(costs, maximize != 0);
  }
  costs.clear();  // with the GIL: dropping a tensor's second reference touches its Python object
  auto& [row_ind, col_ind] = result;
  PyObject* out = PyList_New(num);
  for (Py_ssize_t p = 0; out && p < num; ++p) {
    PyObject* pair = PyTuple_New(2);
    if (pair) {
      PyTuple_SET_ITEM(pair, 0, THPVariable_Wrap(std::move(row_ind[p])));
      PyTuple_SET_ITEM(pair, 1, THPVariable_Wrap(std::move(col_ind[p])));
    }
    if (!pair || !PyTuple_GET_ITEM(pair, 0) || !PyTuple_GET_ITEM(pair, 1)) {
      Py_XDECREF(pair);
      Py_CLEAR(out);
      break;
    }
    PyList_SET_ITEM(out, p, pair);
  }
  return out;
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"_linear_sum_assignment", linear_sum_assignment_list, METH_VARARGS,
     "_linear_sum_assignment(costs: list[Tensor], maximize: bool) -> list[tuple[Tensor, Tensor]]: "
     "torch.ops.cora.linear_sum_assignment, unboxed (see cora.ops.linear_sum_assignment)."},
    {nullptr, nullptr, 0, nullptr}};

struct PyModuleDef cora_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  return PyModule_Create(&cora_module);
}
