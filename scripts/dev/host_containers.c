/*
 * pyxis's srun options on a machine with no container runtime: each task runs on the host.
 *
 * A Slurm profile with a container_image makes NeMo-Run put pyxis's --container-* options on
 * every srun (NeMo-Run's ray.sub as well). Without pyxis, Slurm rejects them. This SPANK plugin
 * accepts them so the local Slurm can run such jobs for real: the image is ignored (the host's
 * programs are used), a mount must map a path to itself (a container could put it elsewhere,
 * the host cannot: refused, the step fails with the mount named), the task starts in
 * --container-workdir. Built and loaded by scripts/dev/local_slurm.py --host-containers.
 */
#include <string.h>
#include <unistd.h>
#include <slurm/spank.h>

SPANK_PLUGIN(nano3_host_containers, 1);

static char workdir[4096];

static int accept_option(int val, const char *optarg, int remote)
{
    return 0;
}

static int same_path_mounts(int val, const char *optarg, int remote)
{
    char mounts[8192];
    char *saved = NULL;

    if (optarg == NULL) {
        return 0;
    }
    strncpy(mounts, optarg, sizeof(mounts) - 1);
    mounts[sizeof(mounts) - 1] = '\0';
    for (char *mount = strtok_r(mounts, ",", &saved); mount; mount = strtok_r(NULL, ",", &saved)) {
        char *target = strchr(mount, ':');
        if (target == NULL) {
            continue;
        }
        *target++ = '\0';
        char *flags = strchr(target, ':');
        if (flags) {
            *flags = '\0';
        }
        if (strcmp(mount, target) != 0) {
            slurm_error("host containers: the mount %s:%s needs a container; on the host a path mounts only "
                        "at itself", mount, target);
            return -1;
        }
    }
    return 0;
}

static int set_workdir(int val, const char *optarg, int remote)
{
    if (optarg) {
        strncpy(workdir, optarg, sizeof(workdir) - 1);
    }
    return 0;
}

struct spank_option spank_options[] = {
    {"container-image", "IMAGE", "[host containers] accepted; the task runs on the host", 1, 0, accept_option},
    {"container-mounts", "SRC[:DST]", "[host containers] each path at itself only", 1, 0, same_path_mounts},
    {"container-workdir", "DIR", "[host containers] the task starts there", 1, 0, set_workdir},
    {"container-name", "NAME", "[host containers] accepted", 1, 0, accept_option},
    {"container-env", "NAME", "[host containers] accepted", 1, 0, accept_option},
    {"container-mount-home", NULL, "[host containers] accepted", 0, 0, accept_option},
    {"no-container-mount-home", NULL, "[host containers] accepted", 0, 0, accept_option},
    {"container-remap-root", NULL, "[host containers] accepted", 0, 0, accept_option},
    {"no-container-remap-root", NULL, "[host containers] accepted", 0, 0, accept_option},
    {"container-writable", NULL, "[host containers] accepted", 0, 0, accept_option},
    {"container-readonly", NULL, "[host containers] accepted", 0, 0, accept_option},
    SPANK_OPTIONS_TABLE_END
};

int slurm_spank_task_init(spank_t sp, int ac, char **av)
{
    if (workdir[0] && chdir(workdir) != 0) {
        slurm_error("host containers: cannot start the task in %s", workdir);
        return -1;
    }
    return 0;
}
