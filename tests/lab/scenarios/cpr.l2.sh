# L2 side of "cpr": the counting guest of "snapshot" (a counter on COM1 and
# fsync'ed records on /dev/vda).
. /lab/scenarios/snapshot.sh
