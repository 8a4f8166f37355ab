//! The KVM side of a VM: the VM file descriptor with its interrupt
//! controllers, timers and memory slots, and the vCPUs.

mod cpuid;
pub mod dump;
mod regs;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;

pub use dump::VcpuDump;
pub use regs::EntryMode;
pub use vcpu::{BootEntry, Vcpu, VcpuError};
pub use vcpu_state::{VcpuState, VcpuStateError};
pub use vm::{Vm, VmError, VmState};
