# The pattern block.sh (L1) and block.l2.sh (L2) agree on: 1 MiB of text
# written at 4 KiB block 256 (1 MiB into the disk).
BLOCK_SEEK=256
BLOCK_COUNT=256
block_pattern() { yes 'lab block pattern 0123456789abcdef' | head -c $((BLOCK_COUNT * 4096)); }
# A second range, for scenarios that write again later (vhost-user).
BLOCK_SEEK2=1024
block_pattern2() { yes 'second lab block pattern fedcba9876543210' | head -c $((BLOCK_COUNT * 4096)); }
