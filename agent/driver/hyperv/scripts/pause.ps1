    $vm = Get-VM -Id $p.id
    Suspend-VM -VM $vm
    Out-FerryResult @{ vms = @(Get-FerryVMInfo (Get-VM -Id $p.id)) }
