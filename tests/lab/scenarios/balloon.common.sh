# What both sides of "balloon" agree on. The guest has 384 MiB so that it
# can fill 100 MiB of tmpfs with the balloon inflated to its 320 MiB target.
BALLOON_MEM=384M
BALLOON_TARGET=320M
BALLOON_KIB=65536 # what the target takes away
BALLOON_FILL_MIB=100
