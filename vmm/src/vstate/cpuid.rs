//! The CPUID a vCPU reports: what the host KVM supports, with the topology
//! of this VM (one socket, one thread per core, `cpus` cores) and the
//! hypervisor bit set.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 1;
const LEAF_CACHE_PARAMS: u32 = 4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const AMD_ECX_CMP_LEGACY: u32 = 1 << 1;

/// Topology level types of leaves 0xB/0x1F.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits of the APIC id that number the cores of the package.
fn core_bits(cpus: u8) -> u32 {
    u32::from(cpus.max(1)).next_power_of_two().trailing_zeros()
}

/// Patches `cpuid` (from KVM_GET_SUPPORTED_CPUID) for vCPU `index` of `cpus`.
pub fn patch(cpuid: &mut CpuId, index: u8, cpus: u8) {
    let apic_id = u32::from(index);
    let cpus32 = u32::from(cpus);
    for e in cpuid.as_mut_slice() {
        patch_entry(e, apic_id, cpus32, core_bits(cpus));
    }
}

fn patch_entry(e: &mut kvm_cpuid_entry2, apic_id: u32, cpus: u32, bits: u32) {
    match e.function {
        LEAF_FEATURES => {
            e.ebx = (apic_id << 24) | ((cpus & 0xff) << 16) | (8 << 8) | (e.ebx & 0xff);
            e.ecx |= ECX_HYPERVISOR;
            if cpus > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing the
        // cache - 1 (all cores share the last level, each core its own L1/L2).
        LEAF_CACHE_PARAMS if e.eax & 0x1f != 0 => {
            let cores = cpus.saturating_sub(1);
            let shared = if (e.eax >> 5) & 0x7 >= 3 { cores } else { 0 };
            e.eax = (e.eax & 0x3fff) | ((shared & 0xfff) << 14) | ((cores & 0x3f) << 26);
        }
        LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
            e.edx = apic_id;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = LEVEL_SMT << 8;
                }
                1 => {
                    e.eax = bits;
                    e.ebx = cpus;
                    e.ecx = (LEVEL_CORE << 8) | 1;
                }
                i => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = i & 0xff;
                }
            }
        }
        LEAF_AMD_EXT_FEATURES => {
            if cpus > 1 {
                e.ecx |= AMD_ECX_CMP_LEGACY;
            } else {
                e.ecx &= !AMD_ECX_CMP_LEGACY;
            }
        }
        LEAF_AMD_SIZES => {
            // ECX[15:12]: APIC id bits for cores; ECX[7:0]: cores - 1.
            e.ecx = (e.ecx & !0xf0ff) | (bits << 12) | (cpus.saturating_sub(1) & 0xff);
        }
        LEAF_AMD_EXT_APIC_ID => {
            e.eax = apic_id;
            e.ebx = apic_id & 0xff;
            e.ecx = 0;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0x1234_0121,
            ebx: 0xffff_ffff,
            ecx: 0,
            edx: 0,
            ..Default::default()
        }
    }

    #[test]
    fn topology_names_the_vcpu_and_the_core_count() {
        let mut c = CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0),
            entry(LEAF_EXT_TOPOLOGY, 0),
            entry(LEAF_EXT_TOPOLOGY, 1),
            entry(LEAF_EXT_TOPOLOGY, 2),
            entry(LEAF_AMD_SIZES, 0),
        ])
        .unwrap();
        patch(&mut c, 2, 3);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 2);
        assert_eq!((e[0].ebx >> 16) & 0xff, 3);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[1].ebx, e[1].edx, e[1].ecx >> 8), (1, 2, LEVEL_SMT));
        assert_eq!((e[2].eax, e[2].ebx, e[2].ecx >> 8), (2, 3, LEVEL_CORE));
        assert_eq!(e[3].ecx >> 8, 0, "levels past the core level are invalid");
        assert_eq!((e[4].ecx & 0xff, (e[4].ecx >> 12) & 0xf), (2, 2));
    }
}
