//! qmatmul.wgsl against the CPU reference (the f32 matmul on the dequantized weight), for every
//! block format the kernels read, both products, odd shapes; and the GPU layout's round trip.

mod common;

use common::{assert_close, gpu, random, ATOL, RTOL};
use lora_wgpu::cpu;
use lora_wgpu::gpu::Dtype;
use lora_wgpu::kernels::matmul::{matmul, MatmulOp};
use lora_wgpu::kernels::qmatmul::{self, FORMATS};
use lora_wgpu::quant::{self, GgmlType};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// `rows` rows of `cols` random ggml blocks of `ty`: random bytes with finite f16 scales (d and,
/// for Q4_K, dmin), so every bit pattern of the values and sub-scales occurs.
fn random_blocks(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let blocks = rows * cols / ty.block_len();
    let mut out = Vec::with_capacity(blocks * ty.block_bytes());
    for _ in 0..blocks {
        let mut block: Vec<u8> = (0..ty.block_bytes()).map(|_| rng.random()).collect();
        let scales = if ty == GgmlType::Q4_K { 2 } else { 1 };
        for s in 0..scales {
            let v = half::f16::from_f32(rng.random_range(-0.05f32..0.05));
            block[2 * s..2 * s + 2].copy_from_slice(&v.to_le_bytes());
        }
        out.extend(block);
    }
    out
}

/// One product on the GPU against the reference: `trans_b` is the forward (Q is (n, k)),
/// otherwise the input gradient (Q is (k, n)).
fn check(ty: GgmlType, m: usize, n: usize, k: usize, trans_b: bool, q: &[u8], seed: u64) {
    let g = gpu();
    let mut op = MatmulOp::new(m, n, k).frozen_b().alpha(0.75).accumulate();
    if trans_b {
        op = op.trans_b();
    }
    let shape = if trans_b { [n, k] } else { [k, n] };
    let a = random(m * k, seed);
    let bias = random(n, seed + 1);
    let c0 = random(m * n, seed + 2);
    let ta = g.upload("a", &a, &[m, k]).unwrap();
    let tq = qmatmul::upload(g, "q", ty, q, shape).unwrap();
    assert_eq!(tq.dtype(), Dtype::Quant(ty));
    let tbias = g.upload("bias", &bias, &[n]).unwrap();
    let tc = g.upload("c", &c0, &[m, n]).unwrap();
    g.run(&[&matmul(g, &tc, &ta, &tq, Some(&tbias), &op).unwrap()])
        .unwrap();
    let got = g.download(&tc).unwrap();
    let mut want = c0;
    cpu::qmatmul::qmatmul(&mut want, &a, q, ty, Some(&bias), &op).unwrap();
    let what = format!("qmatmul {} m {m} n {n} k {k} trans_b {trans_b}", ty.name());
    assert_close(&got, &want, ATOL, RTOL, &what);
}

#[test]
fn qmatmul_forward_every_format() {
    for (i, &ty) in FORMATS.iter().enumerate() {
        let bl = ty.block_len();
        for (j, &(m, n, k)) in [(1, 7, bl), (5, 64, 2 * bl), (37, 130, 3 * bl), (3, 300, bl)]
            .iter()
            .enumerate()
        {
            let seed = (10 * i + j) as u64;
            let q = random_blocks(ty, n, k, seed);
            check(ty, m, n, k, true, &q, seed + 100);
        }
    }
}

#[test]
fn qmatmul_input_grad_every_format() {
    for (i, &ty) in FORMATS.iter().enumerate() {
        let bl = ty.block_len();
        for (j, &(m, n, k)) in [
            (1, bl, 5),
            (2, bl, 1),
            (6, 2 * bl, 33),
            (5, bl, 64),
            (37, 3 * bl, 70),
        ]
        .iter()
        .enumerate()
        {
            let seed = (10 * i + j) as u64 + 1000;
            let q = random_blocks(ty, k, n, seed);
            check(ty, m, n, k, false, &q, seed + 100);
        }
    }
}

#[test]
fn qmatmul_of_quantized_values() {
    // Blocks from the quantizer, as `--quantize` makes them, at a linear layer's shape.
    for &ty in FORMATS {
        let (n, k) = (48, 512);
        let q = quant::quantize(ty, &random(n * k, 7)).unwrap();
        check(ty, 9, n, k, true, &q, 8);
        check(ty, 9, k, n, false, &q, 9);
    }
}

#[test]
fn qmatmul_layout_round_trips() {
    let g = gpu();
    for &ty in FORMATS {
        let (rows, cols) = (3, 2 * ty.block_len());
        let q = random_blocks(ty, rows, cols, 42);
        let words = qmatmul::pack(ty, &q, rows * cols).unwrap();
        assert_eq!(4 * words.len(), qmatmul::packed_bytes(ty, rows * cols));
        assert_eq!(qmatmul::unpack(ty, &words, rows * cols).unwrap(), q);
        let t = qmatmul::upload(g, "q", ty, &q, [rows, cols]).unwrap();
        let want = quant::dequantize(ty, &q, rows * cols).unwrap();
        let got = g.download(&t).unwrap();
        assert_eq!(
            got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            "{}",
            ty.name()
        );
    }
}

#[test]
fn qmatmul_refuses_what_it_cannot_read() {
    let g = gpu();
    // Rows that are not whole blocks.
    let e = qmatmul::quantize_upload(g, "w", GgmlType::Q4_K, &random(2 * 96, 1), [2, 96])
        .unwrap_err()
        .to_string();
    assert!(e.contains("96") && e.contains("q4_k"), "{e}");
    // A format without a kernel.
    let q = vec![0u8; GgmlType::Q6_K.block_bytes()];
    let e = qmatmul::upload(g, "w", GgmlType::Q6_K, &q, [1, 256])
        .unwrap_err()
        .to_string();
    assert!(e.contains("q6_k") && e.contains("q8_0"), "{e}");
    // A weight whose shape does not fit the product.
    let t = qmatmul::quantize_upload(g, "w", GgmlType::Q8_0, &random(64, 2), [2, 32]).unwrap();
    let a = g.zeros("a", &[1, 32]).unwrap();
    let c = g.zeros("c", &[1, 4]).unwrap();
    let op = MatmulOp::new(1, 4, 32).trans_b();
    let e = matmul(g, &c, &a, &t, None, &op).unwrap_err().to_string();
    assert!(e.contains("[2, 32]") && e.contains("[4, 32]"), "{e}");
}

#[test]
fn qmatmul_rows_gathers_the_embedding_over_shards() {
    let g = gpu();
    for (i, &ty) in FORMATS.iter().enumerate() {
        let (c, rows) = (ty.block_len() * 2, [5, 3]);
        let vocab = rows[0] + rows[1];
        let table = random_blocks(ty, vocab, c, 50 + i as u64);
        let split = rows[0] * c / ty.block_len() * ty.block_bytes();
        let shards = [
            qmatmul::upload(g, "e0", ty, &table[..split], [rows[0], c]).unwrap(),
            qmatmul::upload(g, "e1", ty, &table[split..], [rows[1], c]).unwrap(),
        ];
        let ids: Vec<u32> = vec![0, 7, 4, 5, 1, 6, 6, 3, 2];
        let tids = g.upload_u32("ids", &ids, &[ids.len()]).unwrap();
        let out = g
            .upload("out", &random(ids.len() * c, 3), &[ids.len(), c])
            .unwrap();
        let ds = qmatmul::embedding(g, &out, &tids, &[&shards[0], &shards[1]]).unwrap();
        g.run(&ds.iter().collect::<Vec<_>>()).unwrap();
        let mut want = vec![0.0; ids.len() * c];
        cpu::qmatmul::embedding(&mut want, &ids, &table, ty, c).unwrap();
        assert_close(&g.download(&out).unwrap(), &want, 1e-7, 1e-6, ty.name());
    }
}
