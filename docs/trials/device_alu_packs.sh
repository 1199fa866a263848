#!/usr/bin/env bash
# Device run for docs/trials/alu-bf16-packs.patch: the up-projection's H packs rounded by ALU
# ops (int2: 2 of 4 words per chunk, -DSONICMOE_TRIAL_INT_PACKS=2 as the patch sets;
# int4: all) vs main, 7b-n256 heated. Binaries in .dev/ as bench-int2, bench-int4,
# tests-int2, bench-base (main).
set -u
out=${OUT:-/tmp}
(cd .dev && for f in *.xz; do [ -e "$f" ] || continue; [ -e "${f%.xz}" ] && continue
   xz -d -k -f "$f" 2> /dev/null || python3 -c 'import lzma,sys; open(sys.argv[1][:-3],"wb").write(lzma.open(sys.argv[1]).read())' "$f"
 done; chmod +x ./*)
log=$out/int.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader | tee "$log"
ABN_LOG=abn-int.txt timeout 200 bash tools/device_abn.sh 2 base=.dev/bench-base int2=.dev/bench-int2 int4=.dev/bench-int4 \
  -- --kernels --config 7b-n256 --only up_proj,forward_sequence | tail -4
ABN_LOG=abn-int-layer.txt timeout 150 bash tools/device_abn.sh 2 base=.dev/bench-base int4=.dev/bench-int4 int2=.dev/bench-int2 \
  -- --config 7b-n256 --check none | tail -4
SONICMOE_ENGINE=hopper timeout 150 .dev/tests-int2 --gtest_filter='Gpu*:LayerOptionalGrads.Gpu*' > "$out/t-int2.log" 2>&1
echo "tests int2: rc=$?" | tee -a "$log"; tail -3 "$out/t-int2.log" | tee -a "$log"
