// The little test harness of tests/cpp (no test framework): `check` counts and prints failed checks,
// `run_on_every_device` runs a test body on the CPU, and on the GPU when the library has its CUDA kernels
// (CORA_WITH_CUDA) and one is visible, and returns the process exit code (non-zero if any check failed).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

namespace cora_test {

inline int g_checks = 0;
inline int g_failures = 0;

inline void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::printf("FAILED: %s\n", what.c_str());
  }
}

inline int run_on_every_device(const char* name, void (*run)(const at::Device&)) {
  std::vector<at::Device> devices = {at::Device(at::kCPU)};
#ifdef CORA_WITH_CUDA
  if (at::hasCUDA()) {
    devices.emplace_back(at::kCUDA, 0);
  } else {
    std::printf("%s: no GPU visible, CUDA kernel not tested\n", name);
  }
#endif
  for (const auto& device : devices) {
    try {
      run(device);
    } catch (const std::exception& e) {
      ++g_failures;
      std::printf("FAILED: %s: unexpected exception: %s\n", device.str().c_str(), e.what());
    }
  }
  if (g_failures != 0) {
    std::printf("%s: %d of %d checks failed\n", name, g_failures, g_checks);
    return 1;
  }
  std::printf("%s: all %d checks passed\n", name, g_checks);
  return 0;
}

}  // namespace cora_test
