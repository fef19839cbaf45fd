-- Targets choose a hypervisor driver (exec, libvirt, vsphere, hyperv) with
-- options, a network map, a test network and new-macs, all in the target's
-- JSON spec (api.Target). Targets made before drivers existed say "exec"
-- explicitly from now on, so no reader has to default an empty driver.
UPDATE targets SET spec = json_set(spec, '$.driver', 'exec')
 WHERE coalesce(json_extract(spec, '$.driver'), '') = '';
