#!/usr/bin/env bash
# Builds llama.cpp (CPU only) from the source vendored in PyPI's llama-cpp-python sdist, for
# bench/forward_vs_llamacpp.sh and GGUF reference fixtures. Nothing lands in the repository:
#   LLAMACPP_SRC   (default /work/llamacpp-src)      sdist download + unpacked tree
#   LLAMACPP_BUILD (default /work/llama.cpp-build)   cmake build; BUILD_OK written when done
set -euo pipefail
VERSION=${LLAMACPP_PY_VERSION:-0.3.36}
SRC=${LLAMACPP_SRC:-/work/llamacpp-src}
BUILD=${LLAMACPP_BUILD:-/work/llama.cpp-build}
JOBS=${JOBS:-2}

mkdir -p "$SRC" "$BUILD"
tarball="$SRC/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$tarball" ]; then
    # --no-binary only for this package: ":all:" would also build its build tools from source.
    pip download --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$SRC"
fi
tree="$SRC/llama_cpp_python-$VERSION"
[ -d "$tree" ] || tar -xzf "$tarball" -C "$SRC"
vendor="$tree/vendor/llama.cpp"
[ -f "$vendor/CMakeLists.txt" ] || { echo "build-llama-cpp: $vendor has no CMakeLists.txt" >&2; exit 1; }

rm -f "$BUILD/BUILD_OK"
cmake -S "$vendor" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENMP=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF
# What the benchmarks and GGUF fixtures use; targets this llama.cpp version
# does not define (llama-cli became llama-completion) are skipped.
available=$(cmake --build "$BUILD" --target help | grep -o 'llama-[a-z0-9-]*' | sort -u)
built=""
for t in llama-perplexity llama-quantize llama-completion llama-cli llama-bench \
         llama-gguf-split llama-tokenize; do
    echo "$available" | grep -qx "$t" || continue
    nice -n 5 cmake --build "$BUILD" --config Release -j"$JOBS" --target "$t"
    built="$built $t"
done
{
    echo "llama-cpp-python $VERSION (the llama.cpp it vendors)"
    echo "bin: $BUILD/bin"
    echo "convert_hf_to_gguf.py: $vendor/convert_hf_to_gguf.py"
    echo "gguf-py: $vendor/gguf-py"
    echo "targets:$built"
    echo "cmake: -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON, CPU only"
} > "$BUILD/BUILD_OK"
cat "$BUILD/BUILD_OK"
