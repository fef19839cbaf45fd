    # A guest shutdown through the shutdown integration service; -Force only
    # means no confirmation prompt.
    $vm = Get-VM -Id $p.id
    Stop-VM -VM $vm -Force
    Out-FerryResult @{ vms = @(Get-FerryVMInfo (Get-VM -Id $p.id)) }
