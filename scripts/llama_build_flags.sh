# Sourced by scripts/setup.sh and scripts/build_llama_tools.sh: compiler flags for every build of
# llama.cpp (the binding's wheel and the reference tools), so both are built the same way.
#
# Rule: on x86-64, llama.cpp is built without its AMX kernels. With GGML_NATIVE (-march=native)
# on a Xeon that has AMX, llama.cpp compiles its AMX matrix kernels, and in the vendored version
# they die with an illegal instruction (a tile instruction in a worker thread whose tile state
# was never set up) as soon as a quantized model decodes. An explicit -mno-amx-* wins over what
# -march=native enables, whatever the order on the command line, and is a no-op elsewhere.
if [ "$(uname -m)" = x86_64 ] && echo 'int main(void){return 0;}' | "${CC:-cc}" -x c -mno-amx-tile -mno-amx-int8 -mno-amx-bf16 -o /dev/null - >/dev/null 2>&1; then
  no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  case " ${CFLAGS:-} " in *" -mno-amx-tile "*) ;; *) export CFLAGS="${CFLAGS:+$CFLAGS }$no_amx" ;; esac
  case " ${CXXFLAGS:-} " in *" -mno-amx-tile "*) ;; *) export CXXFLAGS="${CXXFLAGS:+$CXXFLAGS }$no_amx" ;; esac
  unset no_amx
fi
