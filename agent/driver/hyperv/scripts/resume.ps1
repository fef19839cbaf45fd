    $vm = Get-VM -Id $p.id
    Resume-VM -VM $vm
    Out-FerryResult @{ vms = @(Get-FerryVMInfo (Get-VM -Id $p.id)) }
