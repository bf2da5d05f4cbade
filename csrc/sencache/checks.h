// The C++ interpreter of the argument rules in sencache_kernels/ops.def (the Python one: sencache_kernels/checks.py).
// Every kernel of an op (CPU, Meta, CUDA) calls check_args first, so each op validates its arguments the same way on
// every backend, with the same messages as the pure-Python fallback.
#pragma once

#include <ATen/core/ivalue.h>

#include <initializer_list>

namespace sencache {

// Check the arguments of sencache::<op>, given in schema order (an absent optional tensor as std::nullopt), against
// the op's SENCACHE_CHECK rules; throws c10::ValueError (Python: ValueError) with the first failing rule's message.
void check_args(const char* op, std::initializer_list<c10::IValue> args);

}  // namespace sencache
