// The smallest program that uses cartridge.cpp as a library: load a model, make a cartridge of a
// document's first tokens (its KV cache as the model computes it), then answer a question with the
// cartridge in place of the document.
//   build/hello_cartridge models/SmolLM2-135M-Instruct.Q4_1.gguf examples/data/varnholm.md
//     "Who kept the Varnholm lighthouse?" [TOKENS]
#include <cstdio>
#include <iostream>
#include <string>

#include "cartridge/text_init.h"
#include "generate/generator.h"
#include "generate/loaded_model.h"
#include "util/error.h"
#include "util/mapped_file.h"

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    std::fprintf(stderr, "usage: %s MODEL DOCUMENT QUESTION [TOKENS]\n", argv[0]);
    return 2;
  }
  try {
    const cartridge::LoadedModel loaded = cartridge::load_model(argv[1]);
    const std::string document = cartridge::read_text_file(argv[2]);
    const int64_t tokens = argc == 5 ? std::stoll(argv[4]) : 128;

    // The cartridge: the KV cache of the document's first `tokens` tokens, as a system message.
    const cartridge::Cartridge cartridge = cartridge::initialize_from_text(
        *loaded.model, *loaded.tokenizer, loaded.chat_template.get(), document,
        cartridge::InitTokenization::kAuto, tokens, /*num_frozen_tokens=*/1);

    // The question after it, in the chat template; greedy by default.
    cartridge::GenerationRequest request;
    request.prefixes = {cartridge.kv_prefix_for(*loaded.model)};
    request.prompt_ids = loaded.encode_chat({{"user", argv[3]}}, /*add_generation_prompt=*/true);
    request.max_new_tokens = 48;
    const auto results = cartridge::generate(*loaded.model, *loaded.tokenizer, {request});
    std::cout << results.front().text << std::endl;
  } catch (const cartridge::Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  } catch (const std::logic_error&) {
    std::fprintf(stderr, "error: TOKENS must be a number of tokens, e.g. 128\n");
    return 2;
  }
  return 0;
}
