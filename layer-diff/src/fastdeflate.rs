//! kiln's own deflate encoder for the fast gzip levels (1-3), in safe
//! Rust: the same bytes on every machine and CPU, no build dependency.
//!
//! It does what the parallel gzip pipeline needs and no more: it deflates
//! one pipeline block, with the 32 KiB before it as the window it may
//! refer to, and ends it either with a sync flush (an empty stored block,
//! so that blocks concatenate into one deflate stream) or as the final
//! block. The block is cut into segments of [`SEGMENT`] input bytes; each
//! becomes one deflate block with its own dynamic Huffman codes (or a
//! stored block when that is smaller, so random data grows by at most a
//! few bytes per 64 KiB).
//!
//! The match finder hashes 4 bytes into a table of the most recent
//! position only (no chains), kept with its 4 bytes: level 1 takes the
//! first match it finds (greedy) from a table an eighth the size, and
//! speeds up through runs of misses sooner; level 2
//! also tries the next position and keeps the longer match (one-step lazy),
//! level 3 does that and indexes every position inside a match. The table
//! starts empty for every pipeline block (then filled from its dictionary),
//! so the output does not depend on how blocks were spread over threads.

// A bit-level codec: every cast narrows a value the format bounds (lengths
// to 258, distances to 32768, code lengths to 15, positions to the 544 KiB
// of a block and its window).
#![allow(clippy::cast_possible_truncation)]

/// Input bytes per deflate block.
const SEGMENT: usize = 128 * 1024;
/// How far back a match may refer.
const WINDOW: usize = 32 * 1024;
/// The match finder's table entries: 32 Ki (256 KiB) at levels 2-3, 4 Ki
/// (32 KiB) at level 1, which then stays in the first-level data cache of
/// common CPUs (against 32 Ki: 1.16x as fast, 1.3% more bytes on a Debian
/// root filesystem; against 8 Ki: 1.05x, 0.7%).
const TABLE: usize = 1 << 15;
const TABLE_FAST: usize = 1 << 12;
const MIN_MATCH: usize = 4;
/// Levels 2-3 look one byte further for a longer match when the first is
/// shorter than this.
const LAZY_BELOW: usize = 32;
/// At levels 2-3, a run of `1 << SKIP_SHIFT` misses makes the match finder
/// step one byte further; at level 1, `1 << SKIP_SHIFT_FAST`.
const SKIP_SHIFT: u32 = 5;
const SKIP_SHIFT_FAST: u32 = 4;
const MAX_MATCH: usize = 258;
/// The longest code deflate allows for literal/lengths and distances.
const MAX_BITS: u8 = 15;
/// The longest code for the code-length alphabet.
const MAX_CL_BITS: u8 = 7;
/// The order the code-length code lengths are sent in (RFC 1951, 3.2.7).
const CL_ORDER: [usize; 19] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

const LEN_BASE: [u16; 29] =
    [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LEN_EXTRA: [u8; 29] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145,
    8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] =
    [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];

/// The length symbol (0-28, for codes 257-285) of every match length.
#[allow(clippy::indexing_slicing)] // evaluated at compile time
const LEN_SYMBOL: [u8; MAX_MATCH + 1] = {
    let mut t = [0u8; MAX_MATCH + 1];
    let mut sym = 0;
    let mut len = 3;
    while len <= MAX_MATCH {
        while sym + 1 < LEN_BASE.len() && LEN_BASE[sym + 1] as usize <= len {
            sym += 1;
        }
        t[len] = sym as u8;
        len += 1;
    }
    t
};

/// The distance symbol of a distance (1-32768).
fn dist_symbol(d: usize) -> usize {
    if d <= 4 {
        return d.saturating_sub(1);
    }
    let high = usize::BITS - 1 - (d - 1).leading_zeros();
    2 * high as usize + (((d - 1) >> (high - 1)) & 1)
}

fn read32(b: &[u8], i: usize) -> u32 {
    b.get(i..i + 4).and_then(|s| s.try_into().ok()).map_or(0, u32::from_le_bytes)
}

/// The slot of `v` in a table of `N` (a power of two) entries.
fn hash<const N: usize>(v: u32) -> usize {
    (v.wrapping_mul(0x9E37_79B1) >> (32 - N.ilog2())) as usize
}

/// How many bytes at `older` and `newer` agree, up to `max`: 8 at a time.
#[inline]
fn match_len(buf: &[u8], older: usize, newer: usize, max: usize) -> usize {
    let (Some(old), Some(new)) = (buf.get(older..older + max), buf.get(newer..newer + max)) else { return 0 };
    let (olds, news) = (old.chunks_exact(8), new.chunks_exact(8));
    let tail = olds.remainder().iter().zip(news.remainder());
    let mut len = 0;
    for (o, n) in olds.zip(news) {
        let (Ok(o), Ok(n)) = (<[u8; 8]>::try_from(o), <[u8; 8]>::try_from(n)) else { break };
        let differ = u64::from_le_bytes(o) ^ u64::from_le_bytes(n);
        if differ != 0 {
            return len + (differ.trailing_zeros() / 8) as usize;
        }
        len += 8;
    }
    len + tail.take_while(|(o, n)| o == n).count()
}

/// An item of a segment: the length of a run of literals (`< MATCH`), or
/// a match (`MATCH | length << 16 | distance`).
const MATCH: u32 = 1 << 31;

/// One segment's symbols and their frequencies. The items go into a
/// buffer made once per pipeline block, one slot per input byte at most.
struct Symbols<'a> {
    items: &'a mut [u32],
    n: usize,
    litlen: [u32; 286],
    dist: [u32; 30],
}

impl<'a> Symbols<'a> {
    fn new(items: &'a mut [u32]) -> Self {
        Symbols { items, n: 0, litlen: [0; 286], dist: [0; 30] }
    }

    fn push(&mut self, item: u32) {
        debug_assert!(self.n < self.items.len(), "a segment's items outgrew their buffer");
        if let Some(slot) = self.items.get_mut(self.n) {
            *slot = item;
        }
        self.n += 1;
    }

    fn items(&self) -> &[u32] {
        self.items.get(..self.n).unwrap_or_default()
    }

    /// A run of literals: one item, its length.
    fn literals(&mut self, run: &[u8]) {
        if run.is_empty() {
            return;
        }
        self.push(run.len() as u32);
        for &b in run {
            if let Some(f) = self.litlen.get_mut(usize::from(b)) {
                *f += 1;
            }
        }
    }

    fn matched(&mut self, len: usize, dist: usize) {
        self.push(MATCH | (len as u32) << 16 | dist as u32);
        let ls = usize::from(LEN_SYMBOL.get(len).copied().unwrap_or(0));
        if let Some(f) = self.litlen.get_mut(257 + ls) {
            *f += 1;
        }
        if let Some(f) = self.dist.get_mut(dist_symbol(dist)) {
            *f += 1;
        }
    }
}

/// The match finder's table: per hash, the latest position with it (plus
/// `WINDOW + 1`; 0: none) in the low half and its 4 bytes in the high
/// half, so that a miss is found without reading the input at the
/// candidate, and an empty slot is out of the window like a stale one.
type Table<const N: usize> = [u64; N];

/// What a level does besides the size of its table.
#[derive(Clone, Copy)]
struct Level {
    /// Look one byte further for a longer match.
    lazy: bool,
    /// Put every position inside a match in the table.
    inside: bool,
    skip_shift: u32,
}

/// Puts position `i` (its 4 bytes `v`) in the table and returns the entry
/// it replaces.
#[inline]
fn swap<const N: usize>(table: &mut Table<N>, v: u32, i: usize) -> u64 {
    let Some(slot) = table.get_mut(hash::<N>(v)) else { return 0 };
    std::mem::replace(slot, u64::from(v) << 32 | (i + WINDOW + 1) as u64)
}

/// The longest match at `i` (before `end`) the table offers, (length,
/// distance), after putting `i` in the table.
#[inline]
fn find<const N: usize>(buf: &[u8], table: &mut Table<N>, i: usize, end: usize) -> Option<(usize, usize)> {
    let v = read32(buf, i);
    let e = swap(table, v, i);
    let dist = (i + WINDOW + 1).wrapping_sub((e & 0xffff_ffff) as usize);
    if (e >> 32) as u32 != v || dist > WINDOW {
        return None;
    }
    let max = (end - i).min(MAX_MATCH) - MIN_MATCH;
    Some((MIN_MATCH + match_len(buf, i - dist + MIN_MATCH, i + MIN_MATCH, max), dist))
}

/// Symbols for `buf[from..end]` (at most `end - from` items): runs of
/// literals between matches. Not inlined, nor is [`write_block`]: the
/// match finder's loop keeps its state in registers then (12% faster).
#[inline(never)]
fn segment<'s, const N: usize>(
    buf: &[u8],
    table: &mut Table<N>,
    level: Level,
    from: usize,
    end: usize,
    items: &'s mut [u32],
) -> Symbols<'s> {
    let mut out = Symbols::new(items);
    // no match reaches past `end`
    let buf = buf.get(..end).unwrap_or_default();
    let end = buf.len();
    let mut i = from;
    // the first byte not yet in a symbol
    let mut anchor = from;
    // in data that does not repeat, look up fewer positions the longer
    // the run of misses (LZ4's acceleration): every byte is still a
    // literal, and the first match resets the pace
    let mut misses = 0usize;
    while i + MIN_MATCH <= end {
        let Some((mut len, mut dist)) = find(buf, table, i, end) else {
            i += 1 + (misses >> level.skip_shift);
            misses += 1;
            continue;
        };
        misses = 0;
        // the first position inside the match not yet in the table
        let mut first = i + 1;
        if level.lazy && len < LAZY_BELOW && i + 1 + MIN_MATCH <= end {
            // the look one byte further puts that position in the table
            first = i + 2;
            if let Some((l2, d2)) = find(buf, table, i + 1, end)
                && l2 > len
            {
                i += 1;
                (len, dist) = (l2, d2);
                first = i + 1;
            }
        }
        out.literals(buf.get(anchor..i).unwrap_or_default());
        out.matched(len, dist);
        let stop = (i + len).min(end - (MIN_MATCH - 1));
        let inside = if level.inside { stop } else { stop.min(i + 2) };
        for k in first..inside {
            swap(table, read32(buf, k), k);
        }
        i += len;
        anchor = i;
    }
    out.literals(buf.get(anchor..end).unwrap_or_default());
    out
}

/// A little-endian bit writer. Every write stores the whole 64-bit
/// accumulator at `pos` (in `out`, or in the stack buffer of
/// [`Bits::symbols`]) and moves `pos` past the complete bytes in it, so no
/// write branches on how full the accumulator is; `out` is kept at least 8
/// bytes longer than `pos` and cut to `pos` at the end.
struct Bits {
    out: Vec<u8>,
    pos: usize,
    acc: u64,
    /// Bits in `acc` not yet counted in `pos`: always under 8 between writes.
    n: u32,
}

/// Adds the `len` low bits of `bits` (at most 56) to the accumulator
/// `acc` holding `n` bits (under 8), stores the accumulator at `pos` in
/// `out` (which has 8 bytes there) and moves `pos` past its complete bytes,
/// leaving `n` under 8 again: every write of [`Bits`], on its fields or on
/// a hot loop's locals.
#[inline]
fn emit(out: &mut [u8], pos: &mut usize, acc: &mut u64, n: &mut u32, bits: u64, len: u32) {
    *acc |= bits << *n;
    *n += len;
    if let Some(dst) = out.get_mut(*pos..*pos + 8) {
        dst.copy_from_slice(&acc.to_le_bytes());
    }
    let bytes = *n >> 3;
    *pos += bytes as usize;
    // `bytes` is at most 7: the shift stays under 64
    *acc >>= bytes * 8;
    *n &= 7;
}

impl Bits {
    fn with_capacity(bytes: usize) -> Self {
        Bits { out: vec![0; bytes.max(64)], pos: 0, acc: 0, n: 0 }
    }

    /// Makes `out` at least `need` bytes longer than `pos`.
    fn room(&mut self, need: usize) {
        if self.out.len() < self.pos + need {
            self.grow(need);
        }
    }

    #[cold]
    fn grow(&mut self, need: usize) {
        let len = (self.out.len() * 2).max(self.pos + need + 64);
        self.out.resize(len, 0);
    }

    /// Writes the `len` low bits of `value` (at most 32).
    fn put(&mut self, value: u32, len: u8) {
        self.put_wide(u64::from(value), u32::from(len));
    }

    /// Writes the `len` low bits of `value` (at most 56).
    fn put_wide(&mut self, value: u64, len: u32) {
        self.room(8);
        emit(&mut self.out, &mut self.pos, &mut self.acc, &mut self.n, value, len);
    }

    /// Writes every item: a literal run's bytes from `raw` through `lit`,
    /// a match through `matched` (at most 56 bits each). The bits go
    /// through a buffer on the stack whose room is checked once per item,
    /// not on every store, and reach `out` 4 KiB at a time (3% faster).
    fn symbols(&mut self, items: &[u32], raw: &[u8], lit: &[u32; 256], matched: impl Fn(u32) -> (u64, u32)) {
        const STAGE: usize = 4096;
        let mut stage = [0u8; STAGE + 8];
        let (mut acc, mut n, mut p) = (self.acc, self.n, 0usize);
        let mut cur = 0usize;
        for &item in items {
            if item & MATCH == 0 {
                let run = item as usize;
                for &b in raw.get(cur..cur + run).unwrap_or_default() {
                    self.drain(&stage, &mut p, STAGE);
                    let packed = lit.get(usize::from(b)).copied().unwrap_or(0);
                    emit(&mut stage, &mut p, &mut acc, &mut n, u64::from(packed & 0x00ff_ffff), packed >> 24);
                }
                cur += run;
                continue;
            }
            self.drain(&stage, &mut p, STAGE);
            cur += ((item >> 16) & 0x1ff) as usize;
            let (bits, len) = matched(item);
            emit(&mut stage, &mut p, &mut acc, &mut n, bits, len);
        }
        self.bytes(stage.get(..p).unwrap_or_default());
        (self.acc, self.n) = (acc, n);
    }

    /// Moves the `*p` complete bytes staged in `stage` to `out` once they
    /// reach `at`.
    #[inline]
    fn drain(&mut self, stage: &[u8], p: &mut usize, at: usize) {
        if *p >= at {
            self.bytes(stage.get(..*p).unwrap_or_default());
            *p = 0;
        }
    }

    /// Pads to a byte boundary.
    fn align(&mut self) {
        if self.n > 0 {
            // zero bits up to the byte's end
            self.put_wide(0, 8 - self.n);
        }
        self.acc = 0;
    }

    /// Appends whole bytes: after [`Bits::align`], or the complete bytes
    /// [`Bits::symbols`] staged (their pending bits stay in `acc`).
    fn bytes(&mut self, data: &[u8]) {
        self.room(data.len() + 8);
        if let Some(dst) = self.out.get_mut(self.pos..self.pos + data.len()) {
            dst.copy_from_slice(data);
        }
        self.pos += data.len();
    }

    /// `data` as stored blocks, the last one final when `last`.
    fn stored(&mut self, data: &[u8], last: bool) {
        let mut chunks = data.chunks(0xffff).peekable();
        if chunks.peek().is_none() {
            self.put(u32::from(last), 3);
            self.align();
            self.bytes(&[0, 0, 0xff, 0xff]);
            return;
        }
        while let Some(c) = chunks.next() {
            let fin = last && chunks.peek().is_none();
            self.put(u32::from(fin), 3);
            self.align();
            let len = c.len() as u16;
            self.bytes(&len.to_le_bytes());
            self.bytes(&(!len).to_le_bytes());
            self.bytes(c);
        }
    }

    /// The bytes written (after [`Bits::align`]).
    fn finish(mut self) -> Vec<u8> {
        self.out.truncate(self.pos);
        self.out
    }
}

/// Huffman code lengths for `freq`, none longer than `limit`; at least two
/// symbols get a code (as zlib does, so that every decoder accepts it).
fn code_lengths(freq: &[u32], limit: u8) -> Vec<u8> {
    let mut f: Vec<u32> = freq.to_vec();
    let mut used = f.iter().filter(|&&x| x > 0).count();
    for x in &mut f {
        if used >= 2 {
            break;
        }
        if *x == 0 {
            *x = 1;
            used += 1;
        }
    }
    let mut syms: Vec<usize> = (0..f.len()).filter(|&s| f.get(s).copied().unwrap_or(0) > 0).collect();
    syms.sort_by_key(|&s| (f.get(s).copied().unwrap_or(0), s));
    let n = syms.len();
    let mut lengths = vec![0u8; f.len()];
    if n == 0 {
        return lengths;
    }
    // Huffman's algorithm with two queues over the sorted leaves
    let mut weight: Vec<u64> = syms.iter().map(|&s| u64::from(f.get(s).copied().unwrap_or(0))).collect();
    let mut parent = vec![0usize; 2 * n];
    let (mut leaf, mut node) = (0usize, n);
    let pick = |leaf: &mut usize, node: &mut usize, weight: &Vec<u64>, made: usize| -> usize {
        let take_leaf = *leaf < n && (*node >= made || weight.get(*leaf) <= weight.get(*node));
        if take_leaf {
            *leaf += 1;
            *leaf - 1
        } else {
            *node += 1;
            *node - 1
        }
    };
    for made in n..2 * n - 1 {
        let first = pick(&mut leaf, &mut node, &weight, made);
        let second = pick(&mut leaf, &mut node, &weight, made);
        let sum = weight.get(first).copied().unwrap_or(0) + weight.get(second).copied().unwrap_or(0);
        weight.push(sum);
        for child in [first, second] {
            if let Some(p) = parent.get_mut(child) {
                *p = made;
            }
        }
    }
    // depths: the root is the last node made
    let mut depth = vec![0u32; 2 * n];
    for v in (0..2 * n - 2).rev() {
        let d = parent.get(v).and_then(|&p| depth.get(p)).copied().unwrap_or(0) + 1;
        if let Some(x) = depth.get_mut(v) {
            *x = d;
        }
    }
    // count codes per length, folding those over the limit into it, then
    // restore the Kraft sum (as miniz and zlib do)
    let limit_us = usize::from(limit);
    let mut count = vec![0u32; limit_us + 1];
    for d in depth.iter().take(n) {
        let l = (*d as usize).clamp(1, limit_us);
        if let Some(c) = count.get_mut(l) {
            *c += 1;
        }
    }
    let mut total: u64 = (1..=limit_us).map(|l| u64::from(count.get(l).copied().unwrap_or(0)) << (limit_us - l)).sum();
    while total > 1 << limit_us {
        if let Some(c) = count.get_mut(limit_us) {
            *c -= 1;
        }
        for l in (1..limit_us).rev() {
            if count.get(l).copied().unwrap_or(0) > 0 {
                if let Some(c) = count.get_mut(l) {
                    *c -= 1;
                }
                if let Some(c) = count.get_mut(l + 1) {
                    *c += 2;
                }
                break;
            }
        }
        total -= 1;
    }
    // the most frequent symbols get the shortest codes
    let mut it = syms.iter().rev();
    for l in 1..=limit_us {
        for _ in 0..count.get(l).copied().unwrap_or(0) {
            if let Some(&s) = it.next()
                && let Some(x) = lengths.get_mut(s)
            {
                *x = l as u8;
            }
        }
    }
    lengths
}

/// Canonical codes for `lengths`, bit-reversed for a little-endian writer.
fn codes(lengths: &[u8]) -> Vec<u32> {
    let mut count = [0u32; 16];
    for &l in lengths {
        if let Some(c) = count.get_mut(usize::from(l)) {
            *c += 1;
        }
    }
    count[0] = 0;
    let mut next = [0u32; 16];
    let mut code = 0;
    for bits in 1..16 {
        code = (code + count.get(bits - 1).copied().unwrap_or(0)) << 1;
        if let Some(n) = next.get_mut(bits) {
            *n = code;
        }
    }
    lengths
        .iter()
        .map(|&l| {
            if l == 0 {
                return 0;
            }
            let Some(n) = next.get_mut(usize::from(l)) else { return 0 };
            let c = *n;
            *n += 1;
            c.reverse_bits() >> (32 - u32::from(l))
        })
        .collect()
}

/// The code-length sequence of the litlen and distance lengths, run-length
/// coded: (symbol 0-18, extra bits value).
fn rle(lengths: &[u8]) -> Vec<(u8, u8)> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&l) = lengths.get(i) {
        let run = lengths.get(i..).map_or(0, |r| r.iter().take_while(|&&x| x == l).count());
        if l == 0 && run >= 3 {
            let r = run.min(138);
            if r >= 11 {
                out.push((18, (r - 11) as u8));
            } else {
                out.push((17, (r - 3) as u8));
            }
            i += r;
        } else if l != 0 && run >= 4 {
            out.push((l, 0));
            let r = (run - 1).min(6);
            out.push((16, (r - 3) as u8));
            i += 1 + r;
        } else {
            out.push((l, 0));
            i += 1;
        }
    }
    out
}

/// The cost in bits of `freq` coded with `lengths`.
fn cost(freq: &[u32], lengths: &[u8]) -> u64 {
    freq.iter().zip(lengths).map(|(&f, &l)| u64::from(f) * u64::from(l)).sum()
}

/// Writes `s` as one dynamic block (or stored blocks of `raw` when smaller).
#[inline(never)]
fn write_block(w: &mut Bits, s: &Symbols<'_>, raw: &[u8], last: bool) {
    let mut litlen = s.litlen;
    litlen[256] = 1;
    let ll_len = code_lengths(&litlen, MAX_BITS);
    let d_len = code_lengths(&s.dist, MAX_BITS);
    let hlit = 257.max(ll_len.iter().rposition(|&l| l > 0).map_or(0, |p| p + 1));
    let hdist = 1.max(d_len.iter().rposition(|&l| l > 0).map_or(0, |p| p + 1));
    let mut all: Vec<u8> = ll_len.get(..hlit).unwrap_or_default().to_vec();
    all.extend_from_slice(d_len.get(..hdist).unwrap_or_default());
    let runs = rle(&all);
    let mut cl_freq = [0u32; 19];
    for &(sym, _) in &runs {
        if let Some(f) = cl_freq.get_mut(usize::from(sym)) {
            *f += 1;
        }
    }
    let cl_len = code_lengths(&cl_freq, MAX_CL_BITS);
    let hclen = 4.max(CL_ORDER.iter().rposition(|&s| cl_len.get(s).copied().unwrap_or(0) > 0).map_or(0, |p| p + 1));
    let extra: u64 =
        runs.iter().map(|&(sym, _)| [2u64, 3, 7].get(usize::from(sym).wrapping_sub(16)).copied().unwrap_or(0)).sum();
    let header = 3 + 5 + 5 + 4 + 3 * hclen as u64 + cost(&cl_freq, &cl_len) + extra;
    let len_freq = litlen.get(257..).unwrap_or_default();
    let len_extra: u64 = len_freq.iter().zip(LEN_EXTRA).map(|(&f, x)| u64::from(f) * u64::from(x)).sum();
    let dist_extra: u64 = s.dist.iter().zip(DIST_EXTRA).map(|(&f, x)| u64::from(f) * u64::from(x)).sum();
    let dynamic = header + cost(&litlen, &ll_len) + cost(&s.dist, &d_len) + len_extra + dist_extra;
    let stored = (raw.len() as u64 + 5 * (raw.len() as u64 / 0xffff + 1)) * 8 + 7;
    if stored <= dynamic {
        w.stored(raw, last);
        return;
    }
    w.put(u32::from(last), 1);
    w.put(2, 2);
    w.put((hlit - 257) as u32, 5);
    w.put((hdist - 1) as u32, 5);
    w.put((hclen - 4) as u32, 4);
    for &s in CL_ORDER.iter().take(hclen) {
        w.put(u32::from(cl_len.get(s).copied().unwrap_or(0)), 3);
    }
    let cl_code = codes(&cl_len);
    for &(sym, x) in &runs {
        let s = usize::from(sym);
        w.put(cl_code.get(s).copied().unwrap_or(0), cl_len.get(s).copied().unwrap_or(0));
        match sym {
            16 => w.put(u32::from(x), 2),
            17 => w.put(u32::from(x), 3),
            18 => w.put(u32::from(x), 7),
            _ => {}
        }
    }
    // one write per literal, two per match: code and extra bits together,
    // `bits << 24 | value` (at most 15 + 13 bits)
    let ll_code = codes(&ll_len);
    let d_code = codes(&d_len);
    let pack = |code: u32, len: u8, extra: u32, extra_len: u8| -> u32 {
        (u32::from(len) + u32::from(extra_len)) << 24 | code | extra << len
    };
    let mut lit = [0u32; 256];
    for (b, slot) in lit.iter_mut().enumerate() {
        *slot = pack(ll_code.get(b).copied().unwrap_or(0), ll_len.get(b).copied().unwrap_or(0), 0, 0);
    }
    let mut by_len = [0u32; 512];
    for (len, slot) in by_len.iter_mut().enumerate().take(MAX_MATCH + 1).skip(3) {
        let ls = usize::from(LEN_SYMBOL.get(len).copied().unwrap_or(0));
        let base = usize::from(LEN_BASE.get(ls).copied().unwrap_or(0));
        let sym = 257 + ls;
        *slot = pack(
            ll_code.get(sym).copied().unwrap_or(0),
            ll_len.get(sym).copied().unwrap_or(0),
            (len - base) as u32,
            LEN_EXTRA.get(ls).copied().unwrap_or(0),
        );
    }
    let mut dist = [(0u32, 0u8, 0u16); 32];
    for (ds, slot) in dist.iter_mut().enumerate().take(30) {
        *slot = (
            d_code.get(ds).copied().unwrap_or(0),
            d_len.get(ds).copied().unwrap_or(0),
            DIST_BASE.get(ds).copied().unwrap_or(0),
        );
    }
    w.symbols(s.items(), raw, &lit, |item| {
        let packed = by_len.get(((item >> 16) & 0x1ff) as usize).copied().unwrap_or(0);
        let d = (item & 0xffff) as usize;
        let ds = dist_symbol(d);
        let (code, len, base) = dist.get(ds & 31).copied().unwrap_or_default();
        let de = DIST_EXTRA.get(ds).copied().unwrap_or(0);
        // the length's code and extra bits (at most 20), then the
        // distance's (at most 28): one write
        let distance = u64::from(code | ((d - usize::from(base)) as u32) << len);
        let len_bits = packed >> 24;
        (u64::from(packed & 0x00ff_ffff) | distance << len_bits, len_bits + u32::from(len + de))
    });
    w.put(ll_code.get(256).copied().unwrap_or(0), ll_len.get(256).copied().unwrap_or(0));
}

/// An empty match finder table, made on the heap.
// built in place and kept boxed in [`Scratch`]: a fixed size lets the
// table's indexing go unchecked
#[allow(clippy::large_stack_arrays, clippy::unnecessary_box_returns)]
fn new_table<const N: usize>() -> Box<Table<N>> {
    Box::new([0; N])
}

/// The memory one thread's [`deflate`] calls reuse: the match finder's
/// tables and a segment's symbols, allocated once instead of per block.
#[derive(Default)]
pub(crate) struct Scratch {
    table: Option<Box<Table<TABLE>>>,
    table_fast: Option<Box<Table<TABLE_FAST>>>,
    items: Vec<u32>,
}

/// Deflates `input[dict_len..]` at `level` (1-3) as a piece of one deflate
/// stream: it may refer back into `input[..dict_len]` (the input before it,
/// at most its last 32 KiB are used), and ends with a sync flush, or as the
/// final block when `last`.
pub(crate) fn deflate(level: u32, input: &[u8], dict_len: usize, last: bool, scratch: &mut Scratch) -> Vec<u8> {
    let dict_len = dict_len.min(input.len());
    let buf = input.get(dict_len.saturating_sub(WINDOW)..).unwrap_or_default();
    let dict_len = dict_len.min(WINDOW);
    let data_len = buf.len() - dict_len;
    if scratch.items.len() < SEGMENT.min(data_len) {
        scratch.items.resize(SEGMENT.min(data_len), 0);
    }
    let items = &mut scratch.items;
    if level <= 1 {
        let level = Level { lazy: false, inside: false, skip_shift: SKIP_SHIFT_FAST };
        let table = scratch.table_fast.get_or_insert_with(new_table);
        return deflate_with(level, table, buf, dict_len, last, items);
    }
    let level = Level { lazy: true, inside: level >= 3, skip_shift: SKIP_SHIFT };
    let table = scratch.table.get_or_insert_with(new_table);
    deflate_with(level, table, buf, dict_len, last, items)
}

/// [`deflate`] of `buf[dict_len..]` with `table`.
fn deflate_with<const N: usize>(
    level: Level,
    table: &mut Table<N>,
    buf: &[u8],
    dict_len: usize,
    last: bool,
    items: &mut [u32],
) -> Vec<u8> {
    table.fill(0);
    for i in 0..dict_len.saturating_sub(MIN_MATCH - 1) {
        swap(table, read32(buf, i), i);
    }
    let mut w = Bits::with_capacity((buf.len() - dict_len) / 2 + 64);
    let mut from = dict_len;
    if from == buf.len() && last {
        // nothing to code, but the stream must end
        w.stored(&[], true);
    }
    while from < buf.len() {
        let end = (from + SEGMENT).min(buf.len());
        let symbols = segment(buf, table, level, from, end, items);
        write_block(&mut w, &symbols, buf.get(from..end).unwrap_or_default(), last && end == buf.len());
        from = end;
    }
    if last {
        w.align();
    } else {
        // a sync flush: an empty stored block, not final
        w.stored(&[], false);
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// [`deflate`] of `data` after `dict`, with fresh scratch memory.
    fn deflate_after(level: u32, dict: &[u8], data: &[u8], last: bool) -> Vec<u8> {
        let mut input = dict.to_vec();
        input.extend_from_slice(data);
        deflate(level, &input, dict.len(), last, &mut Scratch::default())
    }

    fn inflate(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(raw).read_to_end(&mut out).unwrap();
        out
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect()
    }

    fn mixed(n: usize) -> Vec<u8> {
        let words = ["kiln ", "layer ", "deflate ", "/usr/lib/", "\0\0\0\0", "0123456789", "x"];
        let r = noise(n, 7);
        let mut out = Vec::with_capacity(n);
        let mut i = 0;
        while out.len() < n {
            let b = r[i % r.len()];
            if b < 40 {
                out.push(b);
            } else {
                out.extend_from_slice(words[usize::from(b) % words.len()].as_bytes());
            }
            i += 1;
        }
        out.truncate(n);
        out
    }

    #[test]
    fn blocks_decode_alone_and_as_one_stream() {
        for level in 1..=3 {
            for data in
                [Vec::new(), vec![7], b"abcabcabcabc".to_vec(), vec![0; 300_000], noise(200_000, 3), mixed(700_000)]
            {
                let whole = deflate_after(level, &[], &data, true);
                assert_eq!(inflate(&whole), data, "level {level}, {} bytes", data.len());
                // pieces of one stream, each referring to the one before
                let mut stream = Vec::new();
                let cut = data.len() / 3;
                let (a, rest) = data.split_at(cut);
                let (b, c) = rest.split_at(rest.len() / 2);
                stream.extend(deflate_after(level, &[], a, false));
                stream.extend(deflate_after(level, a, b, false));
                let mut dict = a.to_vec();
                dict.extend_from_slice(b);
                stream.extend(deflate_after(level, &dict, c, true));
                assert_eq!(inflate(&stream), data, "level {level}, pieces");
            }
        }
    }

    #[test]
    fn scratch_reused_across_levels_gives_the_bytes_of_fresh_scratch() {
        let data = mixed(600_000);
        let (dict, rest) = data.split_at(100_000);
        let mut scratch = Scratch::default();
        for level in [1, 3, 2, 1, 2, 3] {
            let reused = deflate(level, &data, dict.len(), false, &mut scratch);
            assert_eq!(reused, deflate_after(level, dict, rest, false), "level {level}");
        }
        // the greedy level's smaller table gives other, still valid, bytes
        let (greedy, lazy) = (deflate_after(1, &[], &data, true), deflate_after(2, &[], &data, true));
        assert_ne!(greedy, lazy);
        assert_eq!(inflate(&greedy), data);
    }

    #[test]
    fn random_data_is_stored_not_grown() {
        let data = noise(1 << 20, 11);
        let out = deflate_after(1, &[], &data, true);
        assert!(out.len() < data.len() + data.len() / 1000, "{} for {}", out.len(), data.len());
        assert_eq!(inflate(&out), data);
    }

    #[test]
    fn code_lengths_respect_their_limit_and_kraft() {
        // Fibonacci frequencies make a maximally deep tree
        let mut freq = vec![0u32; 286];
        let (mut a, mut b) = (1u32, 1u32);
        for f in freq.iter_mut().take(30) {
            *f = a;
            (a, b) = (b, a.saturating_add(b));
        }
        for limit in [7u8, 15] {
            let l = code_lengths(&freq, limit);
            assert!(l.iter().all(|&x| x <= limit));
            let kraft: f64 = l.iter().filter(|&&x| x > 0).map(|&x| 2f64.powi(-i32::from(x))).sum();
            assert!((kraft - 1.0).abs() < 1e-9, "complete code: {kraft}");
        }
        // one symbol: still two codes of one bit
        let mut one = vec![0u32; 30];
        one[5] = 10;
        let l = code_lengths(&one, 15);
        assert_eq!(l.iter().map(|&x| usize::from(x == 1)).sum::<usize>(), 2);
    }

    #[test]
    fn distance_symbols() {
        for (d, s) in [(1, 0), (4, 3), (5, 4), (6, 4), (7, 5), (8, 5), (9, 6), (24577, 29), (32768, 29), (16384, 27)] {
            assert_eq!(dist_symbol(d), s, "distance {d}");
        }
        assert_eq!(LEN_SYMBOL[3], 0);
        assert_eq!(LEN_SYMBOL[10], 7);
        assert_eq!(LEN_SYMBOL[11], 8);
        assert_eq!(LEN_SYMBOL[257], 27);
        assert_eq!(LEN_SYMBOL[258], 28);
    }
}
