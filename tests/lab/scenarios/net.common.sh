# Addresses both sides of "net" use: L1's TAP and L2's NIC on one /24.
NET_L1_IP=10.0.2.1
NET_L2_IP=10.0.2.15
NET_MAC=52:54:00:12:34:56
NET_PINGS=3
