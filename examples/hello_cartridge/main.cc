// The smallest program that uses cartridge.cpp as a library: load a model, generate greedily.
//   build/hello_cartridge models/SmolLM2-135M-Instruct.Q4_1.gguf "The capital of France is"
#include <cstdio>
#include <iostream>

#include "generate/generator.h"
#include "generate/loaded_model.h"
#include "util/error.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s MODEL PROMPT\n", argv[0]);
    return 2;
  }
  try {
    const cartridge::LoadedModel loaded = cartridge::load_model(argv[1]);
    cartridge::GenerationRequest request;
    request.prompt_ids = loaded.tokenizer->encode(argv[2]);
    request.max_new_tokens = 32;  // greedy by default
    const auto results = cartridge::generate(*loaded.model, *loaded.tokenizer, {request});
    std::cout << argv[2] << results.front().text << std::endl;
  } catch (const cartridge::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}
