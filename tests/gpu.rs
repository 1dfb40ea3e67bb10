//! The GPU context: adapter choice, limits, features and errors.

mod common;

use common::gpu;
use lora_wgpu::gpu::{list_adapters, GpuOptions};
use lora_wgpu::{Error, Gpu};

#[test]
fn opens_an_adapter_with_the_limits_it_offers() {
    let g = gpu();
    let (all, chosen) = list_adapters(&GpuOptions::from_env());
    let chosen = chosen.expect("list_adapters chose none although Gpu::new succeeded");
    let summary = &all[chosen];
    assert_eq!(summary.info.name, g.info().name);
    // WGPU_BACKEND (as CI sets it to run the suite on GL) is honoured.
    if let Some(wanted) = wgpu::Backends::from_env() {
        let used = wgpu::Backends::from(g.info().backend);
        assert!(
            wanted.contains(used),
            "WGPU_BACKEND={wanted:?} but {used:?} is in use"
        );
    }
    // The device has the adapter's own limits, not WebGPU's low defaults.
    assert_eq!(
        g.limits().max_storage_buffer_binding_size,
        summary.limits.max_storage_buffer_binding_size
    );
    assert_eq!(g.limits().max_buffer_size, summary.limits.max_buffer_size);
    // Optional features are enabled exactly when offered, unless LORA_WGPU_NO_OPTIONAL_FEATURES
    // hides them.
    let allowed = !GpuOptions::from_env().no_optional_features;
    let offered = |f| allowed && summary.features.contains(f);
    assert_eq!(g.features().f16, offered(wgpu::Features::SHADER_F16));
    assert_eq!(g.features().subgroup, offered(wgpu::Features::SUBGROUP));
}

#[test]
fn optional_features_can_be_hidden() {
    let opts = GpuOptions {
        no_optional_features: true,
        ..GpuOptions::from_env()
    };
    let g = Gpu::new(&opts).unwrap();
    assert!(!g.features().f16 && !g.features().subgroup);
}

/// The variants a `Gpu` records with are chosen when it is made, from its options (the
/// `LORA_WGPU_<FAMILY>` variables through `GpuOptions::from_env`); unknown names are ignored; a
/// handle with other variants shares the device.
#[test]
fn variants_come_from_the_options_and_handles_share_the_device() {
    use lora_wgpu::kernels::attention::AttentionVariant;
    use lora_wgpu::kernels::layernorm::LayernormVariant;
    use lora_wgpu::kernels::lora::LoraVariant;
    use lora_wgpu::kernels::matmul::MatmulVariant;
    use lora_wgpu::kernels::Variants;
    let named = |pairs: &[(&str, &str)]| GpuOptions {
        variants: pairs
            .iter()
            .map(|&(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..GpuOptions::from_env()
    };
    let g = Gpu::new(&named(&[
        ("matmul", "register"),
        ("lora", "workgroup"),
        ("attention", "rows"),
        ("layernorm", "workgroup"),
    ]))
    .unwrap();
    let want = Variants {
        matmul: MatmulVariant::Register,
        lora: LoraVariant::Workgroup,
        attention: AttentionVariant::Rows,
        layernorm: LayernormVariant::Workgroup,
    };
    assert_eq!(g.variants(), want);
    let other = g.with_variants(Variants {
        matmul: MatmulVariant::Tiled { tm: 4, tn: 4 },
        ..want
    });
    assert_eq!(g.variants(), want, "the first handle keeps its variants");
    let t = other.upload("t", &[1.0, 2.0], &[2]).unwrap();
    assert_eq!(g.download(&t).unwrap(), vec![1.0, 2.0], "one device");

    let unknown = Gpu::new(&named(&[("matmul", "no-such-kernel")])).unwrap();
    assert_eq!(
        unknown.variants().matmul,
        MatmulVariant::resolve(&unknown, None)
    );
}

#[test]
fn unknown_adapter_is_a_clear_error() {
    let opts = GpuOptions {
        adapter: Some("no-such-adapter-xyz".into()),
        ..GpuOptions::default()
    };
    let err = Gpu::new(&opts).unwrap_err();
    assert!(matches!(err, Error::NoAdapter { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("no-such-adapter-xyz") && msg.contains("mesa-vulkan-drivers"),
        "{msg}"
    );
}

#[test]
fn unknown_backend_name_is_rejected() {
    let err = GpuOptions::parse_backends("vulkan,cuda")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cuda") && err.contains("vulkan, metal, dx12, gl"),
        "{err}"
    );
    assert_eq!(
        GpuOptions::parse_backends("GL").unwrap(),
        wgpu::Backends::GL
    );
}

#[test]
fn buffers_over_the_binding_limit_are_refused() {
    let g = gpu();
    let too_many = (g.limits().max_storage_buffer_binding_size / 4 + 1) as usize;
    let err = g.zeros("huge", &[too_many]).unwrap_err();
    assert!(matches!(err, Error::BufferTooLarge { .. }), "{err:?}");
}

#[test]
fn upload_download_round_trip_and_clear() {
    let g = gpu();
    let data: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5 - 3.0).collect();
    let t = g.upload("t", &data, &[10, 100]).unwrap();
    assert_eq!(t.shape(), &[10, 100]);
    assert_eq!(g.download(&t).unwrap(), data);
    g.clear(&t).unwrap();
    assert!(g.download(&t).unwrap().iter().all(|&v| v == 0.0));
    assert!(g.upload("bad", &data, &[3, 3]).is_err());
    let ids = g.upload_u32("ids", &[1, 2, 50256], &[3]).unwrap();
    assert_eq!(g.download_u32(&ids).unwrap(), vec![1, 2, 50256]);
}

#[test]
fn views_share_the_buffer_at_aligned_offsets() {
    let g = gpu();
    let flat = g.zeros("flat", &[256]).unwrap();
    let a = flat.view("a", 64, &[2, 3]).unwrap();
    g.write(&a, &[1., 2., 3., 4., 5., 6.]).unwrap();
    let all = g.download(&flat).unwrap();
    assert_eq!(&all[64..70], &[1., 2., 3., 4., 5., 6.]);
    assert!(all[..64].iter().chain(&all[70..]).all(|&v| v == 0.0));
    assert_eq!(g.download(&a).unwrap(), vec![1., 2., 3., 4., 5., 6.]);
    // A kernel writes through a view without touching the rest of the buffer.
    let x = g.upload("x", &[1., 1., 1.], &[1, 3]).unwrap();
    let w = g
        .upload("w", &[1., 0., 0., 0., 1., 0., 0., 0., 1.], &[3, 3])
        .unwrap();
    let out = flat.view("out", 128, &[1, 3]).unwrap();
    let op = lora_wgpu::kernels::matmul::MatmulOp::new(1, 3, 3);
    let d = lora_wgpu::kernels::matmul::matmul(g, &out, &x, &w, None, &op).unwrap();
    g.run(&[&d]).unwrap();
    let all = g.download(&flat).unwrap();
    assert_eq!(&all[128..131], &[1., 1., 1.]);
    assert_eq!(&all[64..70], &[1., 2., 3., 4., 5., 6.]);
    g.clear(&a).unwrap();
    let all = g.download(&flat).unwrap();
    assert!(all[64..70].iter().all(|&v| v == 0.0) && all[128] == 1.0);
    assert!(flat.view("misaligned", 3, &[2]).is_err());
    assert!(flat.view("past the end", 192, &[100]).is_err());
}
