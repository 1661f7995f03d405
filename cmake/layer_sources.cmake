# Source files (relative to src/) of the layers that read outside bytes and need no libtorch: the main
# build's io and tokenizer layers (CMakeLists.txt) and the fuzz targets (fuzz/CMakeLists.txt) compile the
# same lists, so a file added to a layer is fuzzed too.
set(CARTRIDGE_IO_SOURCES
  io/ggml_dequantize.cc io/gguf.cc io/model_files.cc io/safetensors.cc)
set(CARTRIDGE_TOKENIZER_SOURCES
  tokenizer/added_vocabulary.cc tokenizer/bpe.cc tokenizer/chat_template.cc tokenizer/gguf_tokenizer.cc
  tokenizer/normalizer.cc tokenizer/post_processor.cc tokenizer/pre_tokenizer.cc tokenizer/regex.cc
  tokenizer/tokenizer.cc tokenizer/tokenizer_json.cc tokenizer/unicode.cc
  tokenizer/jinja/arguments.cc tokenizer/jinja/failure.cc tokenizer/jinja/filters.cc tokenizer/jinja/globals.cc
  tokenizer/jinja/lexer.cc tokenizer/jinja/methods.cc tokenizer/jinja/operations.cc tokenizer/jinja/parser.cc
  tokenizer/jinja/python_string.cc tokenizer/jinja/renderer.cc tokenizer/jinja/template.cc
  tokenizer/jinja/value.cc)
