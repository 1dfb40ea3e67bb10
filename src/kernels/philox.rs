//! Philox4x32-10 on the host, bit-identical to `shaders/philox.wgsl`: the counter RNG that
//! defines every dropout mask ([`Dropout::multiplier`](super::dropout::Dropout::multiplier)
//! evaluates it; the CPU references use that).

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds (Random123's `philox4x32_R(10, ctr, key)`).
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for _ in 0..10 {
        let p0 = M0 as u64 * c[0] as u64;
        let p1 = M1 as u64 * c[2] as u64;
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// The Philox word that decides element `i` at dropout site `offset` under `seed`.
pub fn dropout_word(i: u32, offset: u32, seed: u64) -> u32 {
    let key = [seed as u32, (seed >> 32) as u32];
    philox4x32_10([i >> 2, offset, 0, 0], key)[(i & 3) as usize]
}
