//! The front end's side of a vhost-user connection: what vmm's vhost-user
//! devices, the daemons' tests and the block benchmark use to hand guest RAM
//! and rings to a back end.

use std::os::unix::io::AsRawFd;
use std::path::Path;

use thiserror::Error;
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use crate::ram::GuestRam;

#[derive(Debug, Error)]
pub enum FrontendError {
    #[error("cannot connect to the vhost-user back end at {path}: {source}; start the daemon first (e.g. vhost-user-blk --socket {path} ...)")]
    Connect {
        path: String,
        #[source]
        source: vhost::Error,
    },
    #[error("vhost-user back end at {path}: {op} failed: {source}")]
    Protocol {
        path: String,
        op: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("vhost-user back end at {path} does not offer {what}, which this front end needs")]
    Missing { path: String, what: &'static str },
    #[error("vhost-user back end at {path} serves {offered} queues; {wanted} were asked for")]
    TooFewQueues {
        path: String,
        offered: u64,
        wanted: usize,
    },
    #[error("guest RAM at {base:#x} ({size:#x} bytes) has no fd another process can map: vhost-user needs share=on RAM (backing=memfd,share=on or backing=file,share=on)")]
    PrivateRam { base: u64, size: u64 },
}

/// Where a ring lives in guest memory and how big it is.
#[derive(Clone, Copy, Debug)]
pub struct RingAddrs {
    pub size: u16,
    pub desc: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
}

/// A connected, owned back end with its features negotiated.
pub struct BackendConnection {
    path: String,
    frontend: Frontend,
    /// Virtio features the back end offered (PROTOCOL_FEATURES removed).
    offered: u64,
    queues: usize,
}

impl BackendConnection {
    /// Connects, takes ownership and negotiates the protocol features this
    /// front end relies on (MQ, REPLY_ACK and CONFIG, where offered).
    pub fn connect(path: &Path, queues: usize) -> Result<BackendConnection, FrontendError> {
        let shown = path.display().to_string();
        let mut frontend =
            Frontend::connect(path, queues as u64).map_err(|source| FrontendError::Connect {
                path: shown.clone(),
                source,
            })?;
        let proto = |op, source| FrontendError::Protocol {
            path: shown.clone(),
            op,
            source,
        };
        frontend.set_owner().map_err(|e| proto("SET_OWNER", e))?;
        let offered = frontend
            .get_features()
            .map_err(|e| proto("GET_FEATURES", e))?;
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if offered & protocol_bit == 0 {
            return Err(FrontendError::Missing {
                path: shown,
                what: "VHOST_USER_F_PROTOCOL_FEATURES",
            });
        }
        // Protocol features are negotiated before SET_FEATURES, once
        // GET_FEATURES showed the bit (as QEMU does).
        let available = frontend
            .get_protocol_features()
            .map_err(|e| proto("GET_PROTOCOL_FEATURES", e))?;
        let wanted = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG;
        frontend
            .set_protocol_features(available & wanted)
            .map_err(|e| proto("SET_PROTOCOL_FEATURES", e))?;
        if available.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Every request then waits for the back end's verdict, so a
            // refused memory table fails here and not at the first kick.
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if queues > 1 {
            if !available.contains(VhostUserProtocolFeatures::MQ) {
                return Err(FrontendError::Missing {
                    path: shown,
                    what: "the MQ protocol feature (several queues)",
                });
            }
            let offered_queues = frontend
                .get_queue_num()
                .map_err(|e| proto("GET_QUEUE_NUM", e))?;
            if offered_queues < queues as u64 {
                return Err(FrontendError::TooFewQueues {
                    path: shown,
                    offered: offered_queues,
                    wanted: queues,
                });
            }
        }
        Ok(BackendConnection {
            path: shown,
            frontend,
            offered: offered & !protocol_bit,
            queues,
        })
    }

    fn protocol(&self, op: &'static str, source: vhost::Error) -> FrontendError {
        FrontendError::Protocol {
            path: self.path.clone(),
            op,
            source,
        }
    }

    /// Virtio features the back end offers.
    pub fn offered_features(&self) -> u64 {
        self.offered
    }

    /// Tells the back end which features the driver accepted.
    pub fn set_features(&mut self, acked: u64) -> Result<(), FrontendError> {
        let bits = acked | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        self.frontend
            .set_features(bits)
            .map_err(|e| self.protocol("SET_FEATURES", e))
    }

    /// `size` bytes of the device's config space from `offset`.
    pub fn config(&mut self, offset: u32, size: u32) -> Result<Vec<u8>, FrontendError> {
        let buf = vec![0u8; size as usize];
        let (_, payload) = self
            .frontend
            .get_config(offset, size, VhostUserConfigFlags::WRITABLE, &buf)
            .map_err(|e| self.protocol("GET_CONFIG", e))?;
        Ok(payload)
    }

    /// Shares every region of `ram` with the back end; refused for RAM
    /// without an fd another process could map shared.
    pub fn set_memory(&mut self, ram: &GuestRam) -> Result<(), FrontendError> {
        let mut regions = Vec::new();
        for r in ram.regions() {
            let (Some(fd), Some(offset)) = (r.shared_fd(), r.file_offset) else {
                return Err(FrontendError::PrivateRam {
                    base: r.guest_base.0,
                    size: r.size,
                });
            };
            let host = ram.memory().get_host_address(r.guest_base).map_err(|_| {
                FrontendError::PrivateRam {
                    base: r.guest_base.0,
                    size: r.size,
                }
            })?;
            regions.push(VhostUserMemoryRegionInfo {
                guest_phys_addr: r.guest_base.0,
                memory_size: r.size,
                userspace_addr: host as u64,
                mmap_offset: offset,
                mmap_handle: fd.as_raw_fd(),
            });
        }
        self.frontend
            .set_mem_table(&regions)
            .map(|_| ())
            .map_err(|e| self.protocol("SET_MEM_TABLE", e))
    }

    /// Hands ring `index` to the back end and enables it: from now on the
    /// back end reads kicks from `kick` and signals `call` itself.
    pub fn start_ring(
        &mut self,
        ram: &GuestRam,
        index: usize,
        ring: RingAddrs,
        next_avail: u16,
        kick: &EventFd,
        call: &EventFd,
    ) -> Result<(), FrontendError> {
        let host = |a: GuestAddress| {
            ram.memory()
                .get_host_address(a)
                .map(|p| p as u64)
                .map_err(|_| FrontendError::PrivateRam { base: a.0, size: 0 })
        };
        let config = VringConfigData {
            queue_max_size: ring.size,
            queue_size: ring.size,
            flags: 0,
            desc_table_addr: host(ring.desc)?,
            used_ring_addr: host(ring.used)?,
            avail_ring_addr: host(ring.avail)?,
            log_addr: None,
        };
        let f = &mut self.frontend;
        let r = f
            .set_vring_num(index, ring.size)
            .and_then(|_| f.set_vring_addr(index, &config))
            .and_then(|_| f.set_vring_base(index, next_avail))
            .and_then(|_| f.set_vring_call(index, call))
            .and_then(|_| f.set_vring_kick(index, kick))
            .and_then(|_| f.set_vring_enable(index, true));
        r.map_err(|e| self.protocol("starting a ring", e))
    }

    /// Stops ring `index`; returns the back end's next available index.
    pub fn stop_ring(&mut self, index: usize) -> Result<u16, FrontendError> {
        let f = &mut self.frontend;
        let r = f
            .set_vring_enable(index, false)
            .and_then(|_| f.get_vring_base(index));
        r.map(|b| b as u16)
            .map_err(|e| self.protocol("GET_VRING_BASE", e))
    }

    pub fn queues(&self) -> usize {
        self.queues
    }
}

impl AsRawFd for BackendConnection {
    /// The connection's socket, to watch for the back end hanging up.
    fn as_raw_fd(&self) -> std::os::unix::io::RawFd {
        self.frontend.as_raw_fd()
    }
}
