"""Host-side model of the portable engine's grouped-K tile (src/gemm/sm80).

Transcribes, per thread and lane, the index arithmetic of scheduler.cuh,
loader.cuh (MNMajorLoader), tile.cuh (swz, mn_addr, load_a_frag /
load_b_frag2 for Major::MN, WarpGrid), kernel.cuh (Mainloop pipeline,
FragView) and StoreEpilogue, with the PTX semantics of ldmatrix(.trans) and
mma.m16n8k16, and checks the result against a plain reference. Values are
small integers, so every sum is exact.

It is a transcription, not the code itself: keep it in step when those
formulas change. Also checks that every ldmatrix is free of bank conflicts,
that each load writes every byte of its stage once, and that the fragment
view's slots, rows and column groups agree (DHEpilogue's row reductions).

    python3 tools/sm80_tile_model.py          # all tilings, 4 / 3 / 2 stages (~1 min)
    python3 tools/sm80_tile_model.py quick    # 256 x 128 and 128 x 256, 4 stages
"""
import sys
import numpy as np

KBK, KTHREADS, KWARPM = 64, 256, 64


class Grid:  # tile.cuh WarpGrid
    def __init__(s, bm, bn):
        s.kWarpsM = bm // KWARPM
        s.kWarpsN = KTHREADS // 32 // s.kWarpsM
        s.kWarpN = bn // s.kWarpsN
        s.kNT = s.kWarpN // 8
        assert s.kWarpN in (32, 64)

    def m0(s, w): return (w // s.kWarpsN) * KWARPM
    def n0(s, w): return (w % s.kWarpsN) * s.kWarpN


def swz(row, chunk):  # bytes
    return row * 128 + ((chunk ^ (row & 7)) << 4)


def mn_addr(base, krow, col):
    return base + (col >> 6) * (64 * 128) + swz(krow, (col & 63) >> 3)


class Operand:
    def __init__(s, data, gather=None):
        s.data, s.gather, s.rows = data, gather, data.shape[0]


class MNLoader:  # loader.cuh MNMajorLoader<kCols, kPublisher>, one instance per thread
    def __init__(s, kcols, t, op, expert, first_row, k_rows, col0, col_extent, pub, publisher):
        s.kChunks = kcols // 8
        s.kRowStep = KTHREADS // s.kChunks
        s.kPasses = KBK // s.kRowStep
        s.t, s.op = t, op
        s.col = col0 + (t % s.kChunks) * 8
        s.col_ok = s.col < col_extent
        s.first_row = first_row
        s.max_row, s.k_rows = op.rows - 1, k_rows
        s.pub, s.p = pub, t - publisher  # pub: 2 buffers of KBK (stage k0, row)
        s.index_ = 0

    def index_of(s, kr):
        if s.op.gather is not None and kr < s.k_rows:
            return int(s.op.gather[s.first_row + kr])
        return kr

    def row_of(s, kr, index):  # None past the tile's k-rows
        if kr >= s.k_rows:
            return None
        if s.op.gather is not None:
            return min(max(index, 0), s.max_row)
        return s.first_row + index  # rows_ += first_row * ld

    def copy(s, smem, writes, base, j, row):
        c = s.t % s.kChunks
        dst = mn_addr(base, j, c * 8)
        assert dst % 16 == 0
        e = dst // 2
        if s.col_ok and row is not None:
            smem[e:e + 8] = s.op.data[row, s.col:s.col + 8]
        else:
            smem[e:e + 8] = 0.0
        writes[e:e + 8] += 1

    def load_direct(s, smem, writes, base, k0):
        for i in range(s.kPasses):
            j = s.t // s.kChunks + s.kRowStep * i
            s.copy(smem, writes, base, j, s.row_of(k0 + j, s.index_of(k0 + j)))

    def publish_first(s, k0):
        if 0 <= s.p < KBK:
            s.index_ = s.index_of(k0 + s.p)
            s.publish(k0)

    def publish(s, k0):
        if 0 <= s.p < KBK:
            kr = k0 + s.p
            s.pub[(k0 // KBK) & 1][s.p] = (k0, s.row_of(kr, s.index_))
            s.index_ = s.index_of(kr + KBK)

    def load(s, smem, writes, base, k0):  # from the published addresses
        for i in range(s.kPasses):
            j = s.t // s.kChunks + s.kRowStep * i
            k, row = s.pub[(k0 // KBK) & 1][j]
            assert k == k0, "published addresses of another stage"
            s.copy(smem, writes, base, j, row)


def ldmatrix_x4(smem, addrs, trans):
    """addrs[lane]: byte address of row (lane & 7) of matrix lane >> 3.
    Returns regs[lane][q] = (lo, hi) per PTX ldmatrix (.trans)."""
    mats = []
    for q in range(4):
        rows = [addrs[8 * q + r] for r in range(8)]
        banks = {(a // 16) % 8 for a in rows}
        assert len(banks) == 8, "ldmatrix bank conflict"
        m = np.array([smem[a // 2:a // 2 + 8] for a in rows])  # [row][col]
        mats.append(m.T if trans else m)
    regs = np.zeros((32, 4, 2))
    for t in range(32):
        g, c = t // 4, t % 4
        for q in range(4):
            regs[t, q] = mats[q][g, 2 * c:2 * c + 2]
    return regs


def mma(acc, a, b):
    """acc[lane][4], a[lane][4 regs][2], b[lane][2 regs][2]: m16n8k16 row.col."""
    A = np.zeros((16, 16)); B = np.zeros((16, 8))
    for t in range(32):
        g, c = t // 4, t % 4
        A[g, 2 * c:2 * c + 2] = a[t, 0]; A[g + 8, 2 * c:2 * c + 2] = a[t, 1]
        A[g, 2 * c + 8:2 * c + 10] = a[t, 2]; A[g + 8, 2 * c + 8:2 * c + 10] = a[t, 3]
        B[2 * c:2 * c + 2, g] = b[t, 0]; B[2 * c + 8:2 * c + 10, g] = b[t, 1]
    D = A @ B
    for t in range(32):
        g, c = t // 4, t % 4
        acc[t, 0:2] += D[g, 2 * c:2 * c + 2]; acc[t, 2:4] += D[g + 8, 2 * c:2 * c + 2]


def load_a_frag_mn(smem, base, m_off, kk):
    addrs = []
    for lane in range(32):
        q, r = lane >> 3, lane & 7
        krow = kk * 16 + (q >> 1) * 8 + r
        addrs.append(mn_addr(base, krow, m_off + (q & 1) * 8))
    return ldmatrix_x4(smem, addrs, True)


def load_b_frag2_mn(smem, base, n_off, kk):
    addrs = []
    for lane in range(32):
        q, r = lane >> 3, lane & 7
        krow = kk * 16 + (q & 1) * 8 + r
        addrs.append(mn_addr(base, krow, n_off + (q >> 1) * 8))
    return ldmatrix_x4(smem, addrs, True)


def quad_transpose(p):
    """p[lane][4] of (x, y) -> out[lane][8], literally as epilogue.cuh."""
    def pick(v, i): return v[i]
    got = np.zeros((32, 4, 2))
    for r in range(4):
        send = np.array([pick(p[l], (l & 3) ^ r) for l in range(32)])
        for l in range(32):
            got[l, r] = send[l ^ r]  # __shfl_xor_sync(v, r)
    out = np.zeros((32, 8))
    for l in range(32):
        q = l & 3
        for pos in range(4):
            out[l, 2 * pos:2 * pos + 2] = pick(got[l], pos ^ q)
    return out


class FragView:  # kernel.cuh FragView<kBM, kBN>
    def __init__(s, grid, acc):
        s.g, s.acc = grid, acc  # acc[warp][lane][i][j][f]
        s.kSlots, s.kColGroups = 8, grid.kWarpsN

    def slot_row(s, tid, slot):
        return (tid >> 5) // s.g.kWarpsN * KWARPM + (slot >> 1) * 16 + ((tid & 31) >> 2) + \
            (slot & 1) * 8

    def col_group(s, tid): return (tid >> 5) % s.kColGroups

    def for_each_chunk8(s, fn):
        for w in range(8):
            wm, wn = s.g.m0(w), s.g.n0(w)
            for i in range(4):
                for h in range(2):
                    for gg in range(s.g.kNT // 4):
                        p = np.zeros((32, 4, 2))
                        for j in range(4):
                            p[:, j, 0] = s.acc[w, :, i, 4 * gg + j, 2 * h]
                            p[:, j, 1] = s.acc[w, :, i, 4 * gg + j, 2 * h + 1]
                        v = quad_transpose(p)
                        for lane in range(32):
                            fn(w * 32 + lane, i * 2 + h, wm + i * 16 + (lane >> 2) + h * 8,
                               wn + 32 * gg + 8 * (lane & 3), v[lane])

    def for_each_pair(s, fn):
        for w in range(8):
            wm, wn = s.g.m0(w), s.g.n0(w)
            for lane in range(32):
                for i in range(4):
                    for j in range(s.g.kNT):
                        for h in range(2):
                            fn(w * 32 + lane, i * 2 + h, wm + i * 16 + (lane >> 2) + h * 8,
                               wn + j * 8 + (lane & 3) * 2, s.acc[w, lane, i, j, 2 * h],
                               s.acc[w, lane, i, j, 2 * h + 1])


def check_fragview(bm, bn):
    """slot_row agrees with the rows the iterators pass; (row, col_group) of
    quad leaders is a partition of the tile rows x kColGroups (DHEpilogue's
    part[] has no write conflicts); every tile element is visited once."""
    g = Grid(bm, bn)
    acc = np.zeros((8, 32, 4, g.kNT, 4))
    # tag each accumulator element with its (row, col) as the mma layout puts it
    for w in range(8):
        for lane in range(32):
            for i in range(4):
                for j in range(g.kNT):
                    for f in range(4):
                        r = g.m0(w) + i * 16 + (lane >> 2) + (f >> 1) * 8
                        c = g.n0(w) + j * 8 + (lane & 3) * 2 + (f & 1)
                        acc[w, lane, i, j, f] = r * 1000 + c
    fv = FragView(g, acc)
    seen = np.zeros((bm, bn), int)

    def chunk(tid, slot, row, col, v):
        assert fv.slot_row(tid, slot) == row, (tid, slot, row)
        assert col % 8 == 0
        for k in range(8):
            assert v[k] == row * 1000 + col + k, (row, col, k, v[k])
            seen[row, col + k] += 1
    fv.for_each_chunk8(chunk)
    assert (seen == 1).all()
    seen[:] = 0

    def pair(tid, slot, row, col, v0, v1):
        assert fv.slot_row(tid, slot) == row
        assert v0 == row * 1000 + col and v1 == row * 1000 + col + 1
        seen[row, col] += 1; seen[row, col + 1] += 1
    fv.for_each_pair(pair)
    assert (seen == 1).all()
    part = np.zeros((bm, fv.kColGroups), int)
    for tid in range(KTHREADS):
        if (tid & 31) & 3: continue
        for slot in range(fv.kSlots):
            part[fv.slot_row(tid, slot), fv.col_group(tid)] += 1
    assert (part == 1).all()
    print(f"  FragView {bm}x{bn}: slots/rows/col groups consistent ({fv.kColGroups} groups)")


def run_grouped_k(bm, bn, stages, A, B, M, N, offsets, positions, order, rng):
    """Emulates grouped_gemm_kernel<Grouping::K, MN, MN, ...> StoreEpilogue."""
    g = Grid(bm, bn)
    E = len(offsets) - 1
    m_tiles, n_tiles = -(-M // bm), -(-N // bn)
    out = np.full((E, M, N), np.nan)
    wcount = np.zeros((E, M, N), int)
    op_a_bytes = bm * KBK * 2
    stage_bytes = op_a_bytes + bn * KBK * 2
    for tid_ in range(E * m_tiles * n_tiles):
        nt, mt = tid_ % n_tiles, tid_ // n_tiles
        n0 = nt * bn
        expert = order[mt // m_tiles] if order is not None else mt // m_tiles
        m0 = (mt % m_tiles) * bm
        rows = min(bm, M - m0)
        k_first = max(0, offsets[expert])
        k_len = min(positions, offsets[expert + 1]) - k_first
        pub_a = [[(None, None)] * KBK for _ in range(2)]
        pub_b = [[(None, None)] * KBK for _ in range(2)]
        la = [MNLoader(bm, t, A, expert, k_first, k_len, m0, M, pub_a, 0) for t in range(KTHREADS)]
        lb = [MNLoader(bn, t, B, expert, k_first, k_len, n0, N, pub_b, 64)
              for t in range(KTHREADS)]
        smem = np.full(stages * stage_bytes // 2, np.nan)
        stage_a = lambda s: s * stage_bytes
        stage_b = lambda s: s * stage_bytes + op_a_bytes
        ktiles = -(-k_len // KBK)

        def load(slot, kt, direct=False):
            writes = np.zeros_like(smem, dtype=int)
            for t in range(KTHREADS):
                for l, base in ((la[t], stage_a(slot)), (lb[t], stage_b(slot))):
                    (l.load_direct if direct else l.load)(smem, writes, base, kt * KBK)
            w = writes[stage_a(slot) // 2:(stage_a(slot) + stage_bytes) // 2]
            assert (w == 1).all() and writes.sum() == stage_bytes // 2

        def publish(k0, first=False):
            for l in la + lb:
                (l.publish_first if first else l.publish)(k0)

        for s in range(stages - 1):
            if s < ktiles: load(s, s, direct=True)
        publish((stages - 1) * KBK, first=True)
        acc = np.zeros((8, 32, 4, g.kNT, 4))
        slot = 0
        for kt in range(ktiles):
            nxt = kt + stages - 1
            free = (stages if slot == 0 else slot) - 1
            assert free != slot and free == (kt - 1) % stages
            if nxt < ktiles: load(free, nxt)
            publish((nxt + 1) * KBK)
            sa, sb = stage_a(slot), stage_b(slot)
            for w in range(8):
                wm, wn = g.m0(w), g.n0(w)
                for kk in range(KBK // 16):
                    bf = [load_b_frag2_mn(smem, sb, wn + j * 16, kk) for j in range(g.kNT // 2)]
                    for i in range(4):
                        af = load_a_frag_mn(smem, sa, wm + i * 16, kk)
                        for j in range(g.kNT):
                            b = bf[j >> 1][:, (j & 1) * 2:(j & 1) * 2 + 2]
                            mma(acc[w, :, i, j], af, b)
            slot = 0 if slot + 1 == stages else slot + 1
        assert not np.isnan(acc).any()

        def store(tid, slot_, r, c, v):  # StoreEpilogue
            col = n0 + c
            if r >= rows or col >= N: return
            out[expert, m0 + r, col:col + 8] = v
            wcount[expert, m0 + r, col:col + 8] += 1
        FragView(g, acc).for_each_chunk8(store)
    assert (wcount == 1).all(), "every output element written exactly once"
    return out


def reference(A, B, M, N, offsets, positions):
    E = len(offsets) - 1
    ref = np.zeros((E, M, N))
    for e in range(E):
        for k in range(max(0, offsets[e]), min(positions, offsets[e + 1])):
            ra = A.gather[k] if A.gather is not None else k
            rb = B.gather[k] if B.gather is not None else k
            ref[e] += np.outer(A.data[ra, :M], B.data[rb, :N])
    return ref


def case(name, bm, bn, stages, gather_side, M, N, counts, T, seed):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    P = int(offsets[-1])
    token = rng.integers(0, T, P)  # sorted_token: position -> token (repeats allowed)
    contig_a = lambda cols: Operand(rng.integers(-3, 4, (P, cols)).astype(float))
    gathered = lambda cols: Operand(rng.integers(-3, 4, (T, cols)).astype(float), token)
    if gather_side == 'B':   # dW1: A = dH [P][R], B = X[token] [T][d]
        A, B = contig_a(M), gathered(N)
    else:                    # dW2: A = dO[token] [T][d], B = A' [P][n]
        A, B = gathered(M), contig_a(N)
    order = list(np.argsort(-np.array(counts), kind='stable'))
    out = run_grouped_k(bm, bn, stages, A, B, M, N, list(offsets), P, order, rng)
    ref = reference(A, B, M, N, list(offsets), P)
    ok = np.array_equal(out, ref)
    print(f"  {name}: {bm}x{bn}, {stages} stages, M={M} N={N} counts={counts}: "
          f"{'OK' if ok else 'MISMATCH'}")
    if not ok:
        bad = np.argwhere(out != ref)
        print("   first mismatches (e, m, n):", bad[:8].tolist())
    return ok


if __name__ == '__main__':
    for bm, bn in [(128, 128), (128, 256), (256, 128)]:
        check_fragview(bm, bn)
    quick = len(sys.argv) > 1 and sys.argv[1] == 'quick'
    ok = True
    # M tail (264 = 256 + 8), N tail (136 = 128 + 8), K tails (70, 131 rows),
    # an empty expert, a full multiple of 64, a single row.
    counts = [70, 0, 131, 64, 1]
    for bm, bn in [(256, 128), (128, 256)] + ([] if quick else [(128, 128)]):
        for gside in ['B', 'A']:
            for stages in ([4] if quick else [4, 3, 2]):
                ok &= case('dW1' if gside == 'B' else 'dW2', bm, bn, stages, gside,
                           264, 136, counts, 97, seed=bm + bn + stages)
    # M exactly one tile of 256 rows, N exactly 128 and 256
    ok &= case('dW1', 256, 128, 4, 'B', 256, 128, [129, 3], 50, seed=7)
    ok &= case('dW1', 256, 128, 4, 'B', 512, 256, [65], 40, seed=8)
    # More k-tiles than stages (7 against 4): the K loop's steady state
    # copies from published addresses and alternates their two buffers.
    ok &= case('dW2', 128, 256, 4, 'A', 136, 264, [400, 7], 60, seed=9)
    print('ALL OK' if ok else 'FAILURES')
    sys.exit(0 if ok else 1)
