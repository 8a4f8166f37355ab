# What both sides of "virtio-mem" agree on: a 1 GiB region with 256 MiB
# requested at start, on a 256 MiB guest.
VMEM_SIZE=1G
VMEM_REQUESTED=256M
VMEM_REQUESTED_KIB=262144
