// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
// counter-based generator of Random123. Prepended to every shader that needs random numbers;
// src/cpu/philox.rs is the bit-identical CPU twin.
//
// Dropout convention: element i of a tensor, at dropout site `offset`, under key `seed`, uses
// word (i & 3) of philox4x32_10(counter = (i >> 2, offset, 0, 0), key = seed) and is kept when
// that word is >= threshold = floor(p * 2^32).

const PHILOX_M0: u32 = 0xD2511F53u;
const PHILOX_M1: u32 = 0xCD9E8D57u;
const PHILOX_W0: u32 = 0x9E3779B9u;
const PHILOX_W1: u32 = 0xBB67AE85u;

// High 32 bits of the 64-bit product a * b (WGSL has no mulhi).
fn mulhi32(a: u32, b: u32) -> u32 {
    let al = a & 0xFFFFu;
    let ah = a >> 16u;
    let bl = b & 0xFFFFu;
    let bh = b >> 16u;
    let t = al * bl;
    let m1 = ah * bl + (t >> 16u);
    let m2 = al * bh + (m1 & 0xFFFFu);
    return ah * bh + (m1 >> 16u) + (m2 >> 16u);
}

fn philox4x32_10(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var round = 0u; round < 10u; round++) {
        let hi0 = mulhi32(PHILOX_M0, c.x);
        let lo0 = PHILOX_M0 * c.x;
        let hi1 = mulhi32(PHILOX_M1, c.z);
        let lo1 = PHILOX_M1 * c.z;
        c = vec4<u32>(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
        k = k + vec2<u32>(PHILOX_W0, PHILOX_W1);
    }
    return c;
}

// The four dropout words for elements 4*chunk .. 4*chunk+3 at site `offset`.
fn dropout_words(chunk: u32, offset: u32, seed: vec2<u32>) -> vec4<u32> {
    return philox4x32_10(vec4<u32>(chunk, offset, 0u, 0u), seed);
}
