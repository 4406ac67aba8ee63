# Sourced at the start of every device-tool call (../shared/gpu/README.md): unpacks the Vulkan
# loader carried in .gl/ and points it at the NVIDIA driver. Binaries are carried in .dev/.
for f in ${GL:-.gl}/*.deb; do dpkg -x "$f" /; done  # GL: another folder of the same packages
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export PQVK_CACHE_DIR=/tmp/pqvk-cache
B=${B:-.dev}
# Libraries the test binaries need that the machine lacks (ICU, PCRE2, SentencePiece), carried xz-packed.
if [ -f "$B/lib.tar.xz" ]; then mkdir -p /tmp/pqvk-lib && tar -C /tmp/pqvk-lib -xJf "$B/lib.tar.xz" && export LD_LIBRARY_PATH=/tmp/pqvk-lib/lib; fi
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv > "$OUT/nvidia-smi.txt" 2>&1 || true
