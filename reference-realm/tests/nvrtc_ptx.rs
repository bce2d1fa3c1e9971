//! The CUDA kernels compile: NVRTC turns `kernels.cu` into PTX with every entry point the GPU
//! path loads. NVRTC needs no GPU and no driver, so CI runs this on machines without either,
//! with NVRTC from the `nvidia-cuda-nvrtc` wheel (ci/nvrtc.sh). Without NVRTC it prints
//! SKIPPED, unless `MTOR_REQUIRE_NVRTC=1`, where it fails.

use mtor_realm::signal::gpu;

#[test]
fn kernels_compile_to_ptx_with_nvrtc() {
    if !gpu::nvrtc_present() {
        let msg = "NVRTC (libnvrtc.so.13) not found by the dynamic loader; run ci/nvrtc.sh";
        if std::env::var("MTOR_REQUIRE_NVRTC").as_deref() == Ok("1") {
            panic!("MTOR_REQUIRE_NVRTC=1: {msg}");
        }
        eprintln!("SKIPPED kernels_compile_to_ptx_with_nvrtc: {msg}");
        return;
    }
    // The H100/H200's architecture, and NVRTC's default (what an unknown device would JIT from).
    for arch in [Some("compute_90"), None] {
        let ptx = match gpu::compile_ptx(arch) {
            Ok(p) => p,
            Err(e) => panic!("kernels.cu does not compile for {arch:?}: {e}"),
        };
        for name in gpu::KERNEL_NAMES {
            assert!(
                ptx.contains(&format!(".entry {name}(")),
                "no entry point {name} in the PTX for {arch:?}"
            );
        }
        for (name, want) in gpu::KERNEL_PARAMS {
            let want: Vec<String> = want.iter().map(|t| (*t).to_owned()).collect();
            eprintln!("  {name}({})", want.join(", "));
            assert_eq!(
                params_of(&ptx, name),
                Some(want),
                "{name}: PTX parameters differ from what the launches push"
            );
        }
        if let Some(a) = arch {
            let sm = a.replace("compute_", "sm_");
            assert!(ptx.contains(&format!(".target {sm}")), "PTX not for {sm}");
        }
        eprintln!(
            "kernels.cu compiled to {} bytes of PTX for {}",
            ptx.len(),
            arch.unwrap_or("NVRTC's default architecture")
        );
    }
}

/// The `.param` types of entry `name` in `ptx` (e.g. `["u64", "u32"]`).
fn params_of(ptx: &str, name: &str) -> Option<Vec<String>> {
    let start = ptx.find(&format!(".entry {name}("))?;
    let rest = &ptx[start..];
    let list = &rest[rest.find('(')? + 1..rest.find(')')?];
    Some(
        list.split(',')
            .filter_map(|p| {
                let mut words = p.split_whitespace();
                (words.next()? == ".param").then(|| words.next())?
            })
            .map(|t| t.trim_start_matches('.').to_owned())
            .collect(),
    )
}
