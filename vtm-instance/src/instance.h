// vtm-instance: the per-VM process between QEMU's tpm-emulator control socket and swtpm.
// Its parts: the configuration vtmd passes (instance_config.h), the control relay QEMU talks to
// (control_relay.h) and the process that sets up swtpm and runs the relay (instance_process.h).
#pragma once

#include "control_relay.h"
#include "instance_config.h"
#include "instance_process.h"
