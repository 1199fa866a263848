"""Host-side model of the Hopper transposed-store epilogue (dW1^T tiles).

Transcribes src/gemm/sm90/epilogue_transposed.cuh (TransposedStoreEpilogue)
with the wgmma m64nN accumulator layout and FragView::chunk_pairs of
src/gemm/sm90/kernel.cuh, and the PTX semantics of
stmatrix.sync.aligned.m8n8.x4.trans: for every thread of both consumer
warpgroups it places the tile's values in the shared buffer, reads them back
as the store loop does, and checks that out[n][m] == C[m][n] for every valid
(m, n), that nothing past the tile's rows or columns is written, that each
round writes every byte of the buffer exactly once, and that the stmatrix
writes and 16-byte reads are free of bank conflicts. Values are distinct
integers, so a misplaced one cannot go unnoticed.

It is a transcription, not the code itself: keep it in step when those
formulas change (the GPU tests check the real kernel on a Hopper GPU; CI has
none).

    python3 tools/sm90_transposed_store_model.py
"""
import sys

KBN, KROUND, KROWS, KTHREADS = 256, 64, 64, 128  # tile N, columns per round, rows per warpgroup


def piece(c, q):  # TransposedStoreEpilogue::piece = kernel.cuh's swz(c, q), bytes
    return c * 128 + ((q ^ (c & 7)) << 4)


def acc_value(C, first_row, tid, reg):
    """wgmma m64nN D fragment: register 4 j + 2 h + e of thread tid holds
    row 16 w + l / 4 + 8 h, column 8 j + 2 (l % 4) + e of the warpgroup."""
    w, l = tid >> 5, tid & 31
    j, h, e = reg // 4, (reg // 2) % 2, reg % 2
    return C[first_row + 16 * w + l // 4 + 8 * h][8 * j + 2 * (l % 4) + e]


def chunk_pairs(C, first_row, tid, k):  # FragView::chunk_pairs<k>, sub-tile 0
    g, h = (k >> 1) % (KBN // 32), k & 1
    return [(acc_value(C, first_row, tid, 4 * (4 * g + jj) + 2 * h),
             acc_value(C, first_row, tid, 4 * (4 * g + jj) + 2 * h + 1)) for jj in range(4)]


def banks_free(addrs):
    """16-byte accesses of 8 lanes (one shared-memory wavefront) are
    conflict-free when they fall in 8 different 16-byte bank groups."""
    return len({(a >> 4) & 7 for a in addrs}) == len(addrs)


def run(rows, n_cols, m0=0, n0=0):
    """One 128 x 256 tile with `rows` valid rows and columns up to n_cols
    (the output's N extent); returns the number of checked values."""
    M, N = m0 + 128, n0 + KBN
    C = [[(r * 1000 + c) for c in range(KBN)] for r in range(128)]  # tile values
    out = {}
    for first_row in (0, KROWS):  # the two consumer warpgroups
        for rnd in range(KBN // KROUND):
            buf = [None] * (KROUND * KROWS)  # bf16 slots of the 8 KiB buffer
            # stmatrix: per warp, 4 instructions (u) of 4 matrices each
            for warp in range(4):
                for u in range(KROUND // 16):
                    g, h = rnd * (KROUND // 32) + u // 2, u % 2
                    regs = {l: chunk_pairs(C, first_row, 32 * warp + l, g * 2 + h)
                            for l in range(32)}
                    addr = {l: piece((g % (KROUND // 32)) * 32 + l, 2 * warp + h)
                            for l in range(32)}
                    for m in range(4):  # matrix m: its rows' addresses come from lanes 8 m + i
                        assert banks_free([addr[8 * m + i] for i in range(8)]), "stmatrix conflict"
                        for i in range(8):  # transposed: stored row i = fragment column i
                            base = addr[8 * m + i] // 2
                            for rr in range(8):  # fragment row rr, held by lanes 4 rr + i // 2
                                v = regs[4 * rr + i // 2][m][i % 2]
                                assert buf[base + rr] is None, "a slot written twice"
                                buf[base + rr] = v
            assert all(v is not None for v in buf), "a slot never written"
            # copy-out: thread t reads pieces t + 128 i
            for i in range(KROUND * 8 // KTHREADS):
                for wave in range(KTHREADS // 8):
                    ts = range(8 * wave, 8 * wave + 8)
                    ks = [t + i * KTHREADS for t in ts]
                    assert banks_free([piece(k >> 3, k & 7) for k in ks]), "read conflict"
                for t in range(KTHREADS):
                    k = t + i * KTHREADS
                    c, q = k >> 3, k & 7
                    v = buf[piece(c, q) // 2: piece(c, q) // 2 + 8]
                    col = n0 + rnd * KROUND + c
                    row = first_row + 8 * q
                    if col < n_cols and row < rows:
                        for e in range(8):
                            key = (col, m0 + row + e)
                            assert key not in out, "an output written twice"
                            out[key] = v[e]
    checked = 0
    for (col, m), v in out.items():
        assert m - m0 < rows and col < n_cols, "a store past the tile"
        assert v == C[m - m0][col - n0], f"out[{col}][{m}] = {v}, want C[{m - m0}][{col - n0}]"
        checked += 1
    assert checked == rows * min(KBN, n_cols - n0), "missing outputs"
    return checked


def main():
    total = 0
    for rows, n_cols in ((128, 256), (72, 256), (128, 112), (8, 16), (0, 256)):
        total += run(rows, n_cols)
    total += run(128, 256 + 64, m0=128, n0=256)
    print(f"transposed store model: ok ({total} values checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
