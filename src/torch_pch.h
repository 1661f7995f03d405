// Precompiled header for every target that links libtorch (see CMakeLists.txt). Only the parts of
// torch we use: ATen tensors and ops, autograd, and the optimisers.
#pragma once
#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/generated/variable_factories.h>
#include <torch/optim/adam.h>
#include <torch/types.h>
