#!/usr/bin/env bash
# Make Fashion-MNIST available. Order of lookup (same as the loader): $KDISTILL_DATA,
# /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist), the user cache.
# Installs the Debian package when the files are missing and apt is usable; otherwise downloads the four
# files from the dataset's official mirror into the user cache (kdistill's own loader). Exits 1 when
# neither worked: the demo and the test suite's config smoke tests need the data, and must not pass without.
set -uo pipefail
files="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
have() { for f in $files; do [ -f "$1/$f" ] || return 1; done; }
for d in "${KDISTILL_DATA:-}" /usr/share/datasets/fashion-mnist "${XDG_CACHE_HOME:-$HOME/.cache}/kdistill/fashion-mnist"; do
  [ -n "$d" ] && have "$d" && exit 0
done
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  echo "Fashion-MNIST not found; installing the Debian package dataset-fashion-mnist"
  if $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; then
    exit 0
  fi
  echo "apt-get could not install dataset-fashion-mnist; trying the dataset's official mirror"
fi
py="$(dirname "$0")/../.venv/bin/python"
if [ -x "$py" ] && "$py" -c "from kdistill.data import find_fashion_mnist; print(find_fashion_mnist())"; then
  exit 0
fi
echo "Fashion-MNIST could not be installed or downloaded; see the README (set \$KDISTILL_DATA to a directory" >&2
echo "holding the four IDX .gz files)" >&2
exit 1
