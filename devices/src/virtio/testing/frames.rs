//! Building and parsing the Ethernet frames and virtio-net headers tests exchange.

pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The TAP interface's own MAC (the host side of the link).
pub const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// A MAC nobody owns: the host stack ignores frames sent to it.
pub const NOBODY_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x99];
pub const HOST_IP: [u8; 4] = [10, 0, 2, 1];
pub const GUEST_IP: [u8; 4] = [10, 0, 2, 2];
pub const HOST_CIDR: &str = "10.0.2.1/24";
/// IEEE "local experimental" ethertype: no protocol handler in the host.
pub const TEST_ETHERTYPE: u16 = 0x88b5;

pub const ETH_HLEN: usize = 14;
pub const HDR_F_NEEDS_CSUM: u8 = 1;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;

pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A `len`-byte frame of the test ethertype whose payload follows from `seed`.
pub fn test_frame(dst: [u8; 6], src: [u8; 6], seed: u64, len: usize) -> Vec<u8> {
    assert!(len >= ETH_HLEN);
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let payload: Vec<u8> = (0..len - ETH_HLEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    eth(dst, src, TEST_ETHERTYPE, &payload)
}

/// Ones'-complement sum folded to 16 bits (not complemented).
pub fn fold(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut h = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = !fold(&h, 0);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// UDP datagram with checksum 0 ("none", allowed over IPv4).
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// Sum of the IPv4 pseudo-header, what a driver leaves in the checksum
/// field of a NEEDS_CSUM packet.
pub fn pseudo_sum(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: usize) -> u16 {
    let mut p = Vec::new();
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(l4_len as u16).to_be_bytes());
    fold(&p, 0)
}

/// TCP segment with ACK|PSH set and the checksum field left for the caller.
pub fn tcp(sport: u16, dport: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

/// `virtio_net_hdr_v1`, little-endian.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

impl VnetHdr {
    pub fn bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    pub fn parse(b: &[u8]) -> VnetHdr {
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
            num_buffers: le(10),
        }
    }
}

/// A plain packet as a driver sends it: zero header, then the frame.
pub fn with_hdr(hdr: VnetHdr, frame: &[u8]) -> Vec<u8> {
    let mut p = hdr.bytes().to_vec();
    p.extend_from_slice(frame);
    p
}

/// A UDP datagram from the guest (port 4000) to the host's `dport`.
pub fn udp_to_host(payload: &[u8], dport: u16) -> Vec<u8> {
    eth(
        HOST_MAC,
        GUEST_MAC,
        0x0800,
        &ipv4(GUEST_IP, HOST_IP, 17, &udp(4000, dport, payload)),
    )
}
