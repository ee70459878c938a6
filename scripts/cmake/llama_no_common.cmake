# Included into llama.cpp's own project() when llama-cpp-python compiles it (scripts/setup.sh
# passes -DCMAKE_PROJECT_llama.cpp_INCLUDE=this file). llama-cpp-python forces LLAMA_BUILD_COMMON
# on for its multimodal library (mtmd), which rllm-study does not build (LLAVA_BUILD=OFF) or use:
# the binding loads only libllama and ggml. Off, the compile skips llama.cpp's common/ and
# cpp-httplib, about half of the binding's compile time.
set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama: build common utils library" FORCE)
