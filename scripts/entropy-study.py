#!/usr/bin/env python3
"""Entropy study of KVTC blobs: how far the lossless stage is from the statistics of what it
codes. For each blob: bytes of the code and metadata sections raw, as stored (DEFLATE-1),
re-coded with zlib-9 and Zstandard levels (pip package `zstandard`, if installed), and the
ideal sizes of an order-0 coder per plane (one model per kept group) and of a coder that
conditions each code on the previous token's code of the same component.

    python3 scripts/entropy-study.py BLOB.kvtc...
"""
import sys, struct, zlib, math, collections
try:
    import zstandard
except ImportError:
    zstandard = None

def H(counts):
    n = sum(counts.values()); return -sum(c*math.log2(c/n) for c in counts.values() if c) if n else 0.0

def parse(b):
    assert b[:8] == b'KVTCBLOB'
    ver, hl = struct.unpack_from('<II', b, 8)
    h = b[16:16+hl]; o = 32
    L,Hh,d = struct.unpack_from('<III', h, o); o += 12
    o += 1 + 8 + 4
    tokens, lead, trail = struct.unpack_from('<qqq', h, o); o += 24
    o += 8
    plans = []
    for _ in range(2):
        n, = struct.unpack_from('<I', h, o); o += 4
        g = []
        for _ in range(n):
            s, z, t = struct.unpack_from('<IIB', h, o); o += 9; g.append((s, z, t))
        plans.append(g)
    o += 1 + 8 + 1
    ml, = struct.unpack_from('<I', h, o); o += 4 + ml
    nc, = struct.unpack_from('<I', h, o); o += 4
    chunks = []
    for _ in range(nc):
        k, raw, st, dfl, crc = struct.unpack_from('<BqqBI', h, o); o += 22
        chunks.append((k, raw, st, dfl))
    data = 16 + hl + 4
    secs = collections.defaultdict(bytearray); stored = collections.Counter()
    for k, raw, st, dfl in chunks:
        c = b[data:data+st]; data += st
        secs[k] += zlib.decompress(c, -15) if dfl else c
        stored[k] += st
    return dict(tokens=tokens, n=tokens-lead-trail, plans=plans, secs=secs, stored=stored)

def codes_of(plane, count, bits):
    out = []
    if bits == 8: return list(plane[:count])
    per = 8 // bits; mask = (1 << bits) - 1
    for i in range(count):
        byte = plane[(i*bits) >> 3]; out.append((byte >> ((i*bits) & 7)) & mask)
    return out

def study(path):
    b = open(path, 'rb').read(); p = parse(b); n = p['n']
    names = {1:'keyCodes',2:'keyMeta',3:'valueCodes',4:'valueMeta'}
    tot = collections.Counter()
    for si, (ck, mk) in enumerate([(1,2),(3,4)]):
        plan = p['plans'][si]; codes = bytes(p['secs'][ck]); meta = bytes(p['secs'][mk])
        o = 0; ent_codes = 0.0; cond_codes = 0.0; bits_raw = 0
        by_type = collections.Counter(); by_type_raw = collections.Counter()
        for (s, z, t) in plan:
            nb = (n*z*t + 7)//8; plane = codes[o:o+nb]; o += nb
            cs = codes_of(plane, n*z, t)
            e = H(collections.Counter(cs)); ent_codes += e; by_type[t] += e; by_type_raw[t] += n*z*t
            joint = collections.Counter((cs[(k - 1) * z + j], cs[k * z + j]) for k in range(1, n) for j in range(z))
            ctx = collections.Counter(cs[(k - 1) * z + j] for k in range(1, n) for j in range(z))
            cond_codes += (H(joint) - H(ctx)) * n / max(1, n - 1)
            bits_raw += n*z*t
        # meta: per group: shift lo, shift hi, scale lo, scale hi planes of n bytes
        ent_meta16 = 0.0; ent_meta8 = 0.0
        for gi in range(len(plan)):
            m = meta[gi*4*n:(gi+1)*4*n]
            sh = [m[t] | m[n+t] << 8 for t in range(n)]; sc = [m[2*n+t] | m[3*n+t] << 8 for t in range(n)]
            ent_meta16 += H(collections.Counter(sh)) + H(collections.Counter(sc))
            for q in range(4): ent_meta8 += H(collections.Counter(m[q*n:(q+1)*n]))
        for k, name in [(ck, 'codes'), (mk, 'meta')]:
            raw = bytes(p['secs'][k])
            tot[name+':raw'] += len(raw); tot[name+':deflate1(blob)'] += p['stored'][k]
            tot[name+':zlib9'] += len(zlib.compress(raw, 9)) - 6
            if zstandard:
                for lvl in (1, 3, 9, 19):
                    tot[name+':zstd%d' % lvl] += len(zstandard.ZstdCompressor(level=lvl).compress(raw))
        tot['codes:order0-per-plane'] += ent_codes / 8
        tot['codes:order1-previous-token'] += cond_codes / 8
        tot['meta:order0-per-plane-16bit'] += ent_meta16 / 8
        tot['meta:order0-per-byteplane'] += ent_meta8 / 8
        for t in by_type: tot['codes:int%d raw' % t] += by_type_raw[t]/8; tot['codes:int%d order0' % t] += by_type[t]/8
    return tot, n

tot = collections.Counter(); ntok = 0
for f in sys.argv[1:]:
    t, n = study(f); tot.update(t); ntok += n
for k in sorted(tot): print('%-32s %12.0f bytes  %8.1f bits/token' % (k, tot[k], tot[k]*8/ntok))
